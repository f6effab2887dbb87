"""The README's option tables, generated from the commands' own Typer definitions, so they cannot drift.

    python -m gcomp.cli.reference            # print every command's table
    python -m gcomp.cli.reference --write    # rewrite the tables in README.md (between the option markers)

README.md holds each table between `<!-- options: COMMAND -->` and `<!-- /options -->`; tests/test_readme.py
checks that every table equals what this module renders from the CLI.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"(<!-- options: (?P<cmd>[\w-]+) -->\n)(?P<table>.*?)(<!-- /options -->)", re.S)


def commands() -> dict:
    import typer

    from .app import app

    return dict(typer.main.get_command(app).commands)


def _names(p) -> str:
    if p.param_type_name == "argument":
        return f"`{p.name.upper()}{'...' if p.nargs == -1 else ''}`"
    longs = sorted(p.opts, key=lambda o: (not o.startswith("--"), o))
    if p.secondary_opts:
        return f"`{longs[0]}/{p.secondary_opts[0]}`" + "".join(f", `{o}`" for o in longs[1:])
    return ", ".join(f"`{o}`" for o in longs)


def default_text(p) -> str:
    """What the table says a parameter defaults to: the Typer `show_default` text when it is one, else the value."""
    if p.required:
        return "(required)"
    show = getattr(p, "show_default", None)
    if isinstance(show, str):
        return show
    d = p.default
    if isinstance(d, bool):
        if p.secondary_opts:
            return f"`{p.opts[0] if d else p.secondary_opts[0]}`"
        return "on" if d else "off"
    if d is None or d == "" or d == ():
        return "—"
    if isinstance(d, (list, tuple)):
        return ", ".join(f"`{x}`" for x in d)
    return f"`{d}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def rows(cmd) -> list[tuple[str, str, str]]:
    return [(_names(p), _cell(default_text(p)), _cell(getattr(p, "help", None)))
            for p in cmd.params if not getattr(p, "hidden", False) and p.name != "help"]


def table(name: str) -> str:
    out = ["| option | default | meaning |", "| --- | --- | --- |"]
    out += [f"| {n} | {d} | {h} |" for n, d, h in rows(commands()[name])]
    return "\n".join(out) + "\n"


def render(text: str) -> str:
    """README text with every marked table regenerated."""
    return MARKER.sub(lambda m: m.group(1) + table(m.group("cmd")) + m.group(4), text)


def main(argv: list[str]) -> int:
    if "--write" in argv:
        README.write_text(render(README.read_text()))
        return 0
    for name in commands():
        print(f"### gcomp {name}\n\n{table(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
