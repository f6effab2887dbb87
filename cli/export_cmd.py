"""`gcomp export`: write generator.onnx and step.onnx (and TensorRT engines), validated against PyTorch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import fail, output_folder

from ..engine.search import EXPORT_RECOMMENDED

RECOMMEND_DEFAULT = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in EXPORT_RECOMMENDED.items())
PRECISION_HELP = ("fp32 | fp16 (weights and network compute in fp16) | bf16 (weights stored as bf16, compute fp32). "
                  "Graph inputs/outputs are float32 for every precision.")


def export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint (.pt) or a run folder with checkpoint.pt."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default="export-<precision> beside the checkpoint",
                                       help="Output folder."),
    precision: str = typer.Option("fp32", "--precision", "-p", help=PRECISION_HELP),
    batch: str = typer.Option("dynamic", "--batch", "-b", help="'dynamic' (a 'batch' axis) or a fixed batch size N."),
    unroll: int = typer.Option(1, "--unroll", "-k", min=1, help="Momentum steps per call of step.onnx (unrolled, shared weights)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (18-23; the exporter's native opset is 18)."),
    trt: bool = typer.Option(False, "--trt", help="Also build generator.engine and step.engine with TensorRT or TensorRT-RTX."),
    no_validate: bool = typer.Option(False, "--no-validate", help="Skip the comparison with the PyTorch reference."),
    recommend: str = typer.Option("", "--recommend", show_default=RECOMMEND_DEFAULT,
                                  help="The settings the model recommends, stored in its metadata and used when "
                                  "a completion gives none: KEY=VALUE,... of iters, lr, momentum, lam, optimizer, patience "
                                  "and blend (what --blend auto stands for, e.g. poisson:0.75); KIND.KEY=VALUE for one mask "
                                  "kind (left.blend=poisson:1); keys left out keep the values shown."),
    description: str = typer.Option("", "--description", show_default="the architecture and the checkpoint's name",
                                    help="Free text stored in the metadata."),
    license: str = typer.Option("", "--license", show_default="unspecified", help="The model's licence, stored in the metadata."),
):
    """Export a checkpoint so the runtime completes images without PyTorch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise fail("gcomp export needs PyTorch: pip install 'gcomp[train]' "
                   "(on CPU-only machines: pip install torch==2.13.0 first)") from None
    import time

    from ..export.metadata import parse_recommend
    from ..export.onnx_export import check_options, export_model
    from ..export.trt import EngineMismatchError, TensorRTUnavailable
    from ..export.validate import ValidationError
    from ..train.checkpoint_file import CheckpointError, resolve

    try:
        check_options(precision, batch, unroll, opset)
        parse_recommend(recommend)
        ckpt = resolve(checkpoint)
    except (ValueError, CheckpointError) as e:  # CheckpointError is a ValueError
        raise fail(str(e)) from None
    out_dir = out if out is not None else ckpt.parent / f"export-{precision}"
    output_folder(out_dir, "--out")  # before minutes of export and validation

    t0 = time.perf_counter()
    try:
        result = export_model(ckpt, out_dir, precision=precision, batch=batch, unroll=unroll, opset=opset,
                              trt=trt, validate=not no_validate, log=typer.echo, recommend=recommend or None,
                              description=description or None, license=license or None)
    except CheckpointError as e:
        raise fail(str(e)) from None
    except ValidationError as e:
        _table(e.report)
        raise fail(str(e), code=1) from None
    except (TensorRTUnavailable, EngineMismatchError, ValueError) as e:
        raise fail(str(e)) from None
    except RuntimeError as e:
        raise fail(str(e), code=1) from None
    except OSError as e:  # a file that could not be read or written (the disk full, a folder gone)
        raise fail(f"{e.filename or out_dir}: {e.strerror or e}") from None
    if result["validation"] is not None:
        _table(result["validation"])
        typer.echo(f"validation passed; report saved as {Path(result['out_dir']) / 'validation.json'}")
    total = sum(f["bytes"] for f in result["files"])
    typer.echo(f"export complete ({time.perf_counter() - t0:.1f} s), {len(result['files'])} files, "
               f"{total / 1e6:.1f} MB in {result['out_dir']}")


def _table(report: dict, what: str = "validation") -> None:
    """The report's checks as a table (also train-encoder's, whose report has no unroll or trajectory)."""
    from rich.console import Console
    from rich.table import Table

    from ..export.validate import format_table

    how = (f"unroll {report['unroll']}, batch {report['batch_size']}, {report['trajectory_steps']}-step trajectory"
           if "trajectory_steps" in report else f"batch {report['batch_size']}, {report.get('inputs', '')}")
    table = Table(title=f"{what} vs PyTorch ({report['precision']})",
                  caption=f"{how}; relative error = {report['relative_error']}")
    for col in ("check", "max abs", "max rel", "tolerance", ""):
        table.add_column(col, justify="left" if col == "check" else "right")
    for row in format_table(report):
        table.add_row(*row, style="bold red" if row[-1] == "FAIL" else None)
    Console(width=110).print(table)
