"""The README's option tables are the CLI's own definitions (names, defaults, help), so they cannot drift.

After changing a command's options: `python -m gcomp.cli.reference --write` regenerates the tables."""
import re

from typer.testing import CliRunner

from gcomp.cli import reference
from gcomp.cli.app import app

README = reference.README.read_text()


def test_every_command_has_a_generated_table_in_the_readme():
    marked = re.findall(r"<!-- options: ([\w-]+) -->", README)
    assert sorted(marked) == sorted(reference.commands()), "each command needs one table in the README"


def test_the_readme_tables_equal_the_cli_definitions():
    stale = [m.group("cmd") for m in reference.MARKER.finditer(README)
             if m.group("table") != reference.table(m.group("cmd"))]
    assert not stale, (f"README option tables out of date for {stale}: run `python -m gcomp.cli.reference --write`")


def test_every_option_and_default_is_in_its_table():
    """Independently of the renderer's layout: each option's long name and its default text appear in its row."""
    for name, cmd in reference.commands().items():
        block = re.search(rf"<!-- options: {re.escape(name)} -->\n(.*?)<!-- /options -->", README, re.S).group(1)
        for p in cmd.params:
            if p.name == "help" or p.param_type_name == "argument":
                continue
            longest = max(p.opts, key=len)
            row = next((r for r in block.splitlines() if f"`{longest}" in r), None)
            assert row is not None, f"gcomp {name}: {longest} missing from the README table"
            assert reference.default_text(p).replace("|", "\\|") in row, f"gcomp {name} {longest}: default"


def test_help_texts_keep_their_brackets():
    """Rich markup would eat "[ray]" in "pip install 'gcomp[ray]'": help texts are plain text."""
    r = CliRunner().invoke(app, ["complete", "--help"], terminal_width=200)
    assert "gcomp[ray]" in r.output
