"""The Click command class every gcomp subcommand uses: Typer's, with Click's plain argument display and
hidden aliases for renamed options.

Typer 0.2x writes a required argument as `{INPUT}` in the usage line and a list argument's type as
`<list[Path]>`; Click (and every man page) writes `INPUT OUTPUT` and `DATA...`. Older Typer already
does; there the overrides below change nothing.
"""
from __future__ import annotations

from typing import get_args

from typer.core import TyperArgument, TyperCommand


class Argument(TyperArgument):
    def get_usage_pieces(self, ctx) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def display_type_rich(self, ctx) -> str | None:
        """The type after the argument's name in --help: `<path>...` for a list of paths, not `<list[Path]>`."""
        shown = super().display_type_rich(ctx)
        desc = getattr(self, "type_descriptor", None)
        if shown and desc is not None and getattr(desc, "is_list", False):
            shown = f"<{_element_type(desc.annotation)}>..."
        return shown


def _element_type(annotation) -> str:
    """`path` for List[Path] (as Typer names a Path option's type), else the element type's name: `int`, `str`."""
    args = get_args(annotation)
    name = getattr(args[0] if args else str, "__name__", "value")
    return "path" if name in ("Path", "PurePath") else name.lower()


class Command(TyperCommand):
    """`aliases`: old option spellings, still accepted but not shown in --help (`--quiet` for `--no-progress`)."""

    aliases: dict[str, str] = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if type(p) is TyperArgument:
                p.__class__ = Argument  # same fields, Click's display (Typer builds the parameters itself)

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if self.aliases:
            cut = args.index("--") if "--" in args else len(args)  # after `--`, every word is an argument
            args = [self.aliases.get(a, a) for a in args[:cut]] + args[cut:]
        return super().parse_args(ctx, args)


def with_aliases(aliases: dict[str, str]) -> type[Command]:
    """A Command class that also takes the given old spellings: with_aliases({"--quiet": "--no-progress"})."""
    return type("Command", (Command,), {"aliases": dict(aliases)})
