"""`gcomp train`: train the seed's DCGAN on image folders and/or tar shards.

torch and gcomp.train are imported only when the command runs, so `gcomp --help` never loads torch.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from .errors import fail

#: options renamed to match the other commands, still accepted (hidden from --help) so older scripts keep working
OLD_SPELLINGS = {"--quiet": "--no-progress"}
INSTALL_HINT = ("training needs PyTorch: pip install 'gcomp[train]' "
                "(on CPU-only machines, pip install torch==2.13.0 first)")


def train(
    data: List[Path] = typer.Argument(..., metavar="DATA", help="Image folders (searched recursively) and/or plain tar files of images.",
                                      show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint.pt, config.json, log.jsonl, samples/."),
    size: int = typer.Option(64, help="Image size: 32, 64 or 128."),
    steps: Optional[int] = typer.Option(None, help="Total training steps (one D and two G updates each); give --steps or --epochs."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the data instead of --steps: steps = ceil(epochs x images / (batch x processes)); fractions allowed."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per step, per process."),
    seed: int = typer.Option(0, help="Seeds the init, z, the data order and the sample grid."),
    device: str = typer.Option("auto", help="auto (CUDA if available), cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/checkpoint.pt up to --steps/--epochs."),
    zdim: int = typer.Option(100, help="Dimension of z."),
    gf: int = typer.Option(64, help="Generator width (channels of its last hidden layer)."),
    df: int = typer.Option(64, help="Discriminator width (channels of its first layer)."),
    lr: float = typer.Option(2e-4, help="Adam learning rate (both networks)."),
    beta1: float = typer.Option(0.5, help="Adam beta1."),
    sample_every: int = typer.Option(200, "--sample-every", help="Write samples/step_NNNNNN.png (8x8 grid of G(fixed z), BatchNorm in eval mode) every N steps."),
    save_every: int = typer.Option(500, "--save-every", help="Write checkpoint.pt (and a snapshot) every N steps and at the end."),
    workers: int = typer.Option(2, help="DataLoader worker processes per training process."),
    precision: str = typer.Option("auto", help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512_BF16/AMX; with channels_last there), fp32 elsewhere; fp32 or bf16 forces it."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="--no-amp is --precision fp32 (kept for older scripts)."),
    snapshots: bool = typer.Option(True, "--snapshots/--no-snapshots", help="Also keep OUT/snapshots/step_NNNNNN.pt (weights only) at every save, to choose one with gcomp eval."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="A Rich bar (step, d_loss, g_loss, images/s) on a terminal, a status line every --sample-every steps otherwise."),
):
    """Train a DCGAN (the seed's recipe: Adam 2e-4/0.5, G updated twice per D step). Multi-GPU: torchrun."""
    if steps is not None and epochs is not None:
        raise fail("give --steps or --epochs, not both")
    if steps is None and epochs is None:
        raise fail("give --steps N or --epochs N")
    for p in data:
        if not p.exists():
            raise fail(f"data path does not exist: {p}")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise fail(INSTALL_HINT) from None
    from ..train.checkpoint import CheckpointError
    from ..train.data import DataError
    from ..train.loop import TrainConfig, TrainError
    from ..train.loop import train as run

    cfg = TrainConfig(data=[str(p) for p in data], out=str(out), size=size, zdim=zdim, gf=gf, df=df,
                      batch_size=batch_size, steps=steps, epochs=epochs, lr=lr, beta1=beta1, seed=seed,
                      device=device, sample_every=sample_every, save_every=save_every, resume=resume,
                      workers=workers, precision=precision, amp=amp, snapshots=snapshots,
                      progress=progress)
    try:
        path = run(cfg)
    except (TrainError, DataError, CheckpointError) as e:
        raise fail(str(e)) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        typer.echo(str(path))
