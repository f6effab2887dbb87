"""What a checkpoint file is, without torch: its error type, its format marker, finding it in a run folder.

The runtime and the command line import these to name or report checkpoint problems without loading
torch; `train/checkpoint.py` (torch) reads and writes the files themselves.
"""
from __future__ import annotations

import os
from pathlib import Path

FORMAT = "gcomp-checkpoint/1"
CKPT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, or not one of ours."""


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder holding `checkpoint.pt`."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT_NAME
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a .pt file or a run folder with {CKPT_NAME})")
    return p
