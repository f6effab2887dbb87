"""The `gcomp` command: a thin Typer layer over gcomp's Python API.

Each subcommand lives in its own module and imports heavy libraries (torch, onnxruntime) only
when it runs, so `gcomp --help` is instant and the runtime commands never import torch.
"""
from __future__ import annotations

import typer

from .. import __version__
from . import bench_cmd, complete_cmd, encoder_cmd, eval_cmd, export_cmd, train_cmd
from .command import Command, with_aliases

app = typer.Typer(
    name="gcomp",
    help="Semantic image completion with GANs: train a DCGAN, export it, complete images at scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: "pip install 'gcomp[ray]'" must print its [ray]
)


def _version(value: bool):
    if value:
        typer.echo(f"gcomp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


app.command("complete", cls=Command)(complete_cmd.complete)
app.command("train", cls=with_aliases(train_cmd.OLD_SPELLINGS))(train_cmd.train)
app.command("bench", cls=Command)(bench_cmd.bench)
app.command("eval", cls=Command)(eval_cmd.evaluate)
app.command("export", cls=Command)(export_cmd.export)
app.command("train-encoder", cls=Command)(encoder_cmd.train_encoder)


def main(argv: list[str] | None = None) -> None:
    """The console script. Usage errors (`--iters abc`, an unknown option, a missing argument) come out in gcomp's
    one-line form, `error: <what> (see gcomp CMD --help)`, exit 2, instead of Click's multi-line box."""
    import sys

    try:  # newer Typer vendors Click as typer._click (its exceptions are not click's); older ones use click
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    try:
        rc = app(args=argv, prog_name="gcomp", standalone_mode=False)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `gcomp` or `gcomp CMD` alone: the help, as Click shows it
            typer.echo(e.format_message(), err=True)
            sys.exit(2)
        ctx = e.ctx
        where = ctx.command_path if ctx is not None else "gcomp"
        typer.echo(f"error: {e.format_message().rstrip('.')} (see {where} --help)", err=True)
        sys.exit(2)
    except click.ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:  # not click.Abort: the vendored Click of newer Typer has none (typer.Abort is both)
        typer.echo("aborted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)  # a command's return value is not an exit status


if __name__ == "__main__":
    main()
