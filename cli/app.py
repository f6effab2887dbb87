"""The `gcomp` command: a thin Typer layer over gcomp's Python API.

Each subcommand lives in its own module and imports heavy libraries (torch, onnxruntime) only
when it runs, so `gcomp --help` is instant and the runtime commands never import torch.
"""
from __future__ import annotations

import typer

from .. import __version__
from . import bench_cmd, complete_cmd, encoder_cmd, eval_cmd, export_cmd, train_cmd

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


app.command("complete")(complete_cmd.complete)
app.command("train")(train_cmd.train)
app.command("bench")(bench_cmd.bench)
app.command("eval")(eval_cmd.evaluate)
app.command("export")(export_cmd.export)
app.command("train-encoder")(encoder_cmd.train_encoder)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
