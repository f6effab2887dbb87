"""`gcomp train-encoder`: train E(masked image, mask) -> z against a frozen generator and export it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from .errors import fail
from .export_cmd import _table


def train_encoder(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="The generator's checkpoint (.pt or run folder)."),
    data: List[Path] = typer.Argument(..., metavar="DATA", help="Image folders and/or tar shards (the generator's training data)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder: encoder.onnx is written beside step.onnx."),
    steps: int = typer.Option(1000, "--steps", help="Training steps."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (cosine schedule to 0)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the init, the data order and the masks."),
    precision: str = typer.Option("fp32", "--precision", help="Weight storage: fp32, fp16 or bf16 (half the file); computed in fp32."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cpu or cuda."),
    train_precision: str = typer.Option("auto", "--train-precision", help="Training compute, as gcomp train's --precision: auto (bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere), fp32 or bf16."),
):
    """Train the encoder that starts `gcomp complete`'s search (--init encoder) and export it."""
    from ..engine.backends.exported import ENCODER_VALIDATION_FILE
    from ..export.encoder import PRECISIONS

    if precision not in PRECISIONS:  # here, not after training, which export_encoder would refuse only then
        raise fail(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        from ..export.encoder import export_encoder
        from ..export.validate import EncoderValidationError
        from ..train.checkpoint import CheckpointError
        from ..train.data import DataError
        from ..train.encoder import EncoderConfig, train_encoder as run
    except ImportError:
        raise fail("training needs PyTorch: pip install 'gcomp[train]'") from None
    try:  # train_encoder checks the other options and the export folder before it trains or writes
        pt = run(EncoderConfig(model=str(checkpoint), data=tuple(str(d) for d in data), out=str(out), steps=steps,
                               batch_size=batch_size, lr=lr, seed=seed, device=device,
                               precision=train_precision), log=lambda m: typer.echo(m, err=True))
        path = export_encoder(pt, pt.parent, precision)
    except EncoderValidationError as e:  # as gcomp export's: the table, the line with the digits that decide, exit 1
        _table(e.report, "encoder validation")
        raise fail(str(e), code=1) from None
    except (CheckpointError, DataError, ValueError) as e:
        raise fail(str(e)) from None
    report = path.parent / ENCODER_VALIDATION_FILE
    _table(json.loads(report.read_text()), "encoder validation")
    typer.echo(f"encoder validation passed; report saved as {report}")
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {pt}")
