"""DCGAN training (needs torch: `pip install 'gcomp[train]'`).

Importing gcomp.train does not import torch; `from gcomp.train import train, TrainConfig` loads
gcomp.train.loop (and torch) on first use.
"""
from __future__ import annotations

__all__ = ["train", "TrainConfig"]


def __getattr__(name: str):
    if name in __all__:
        from . import loop
        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
