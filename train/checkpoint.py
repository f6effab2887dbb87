"""Checkpoint files: the model config travels inside, so loading needs no flags (nanoGPT's habit)."""
from __future__ import annotations

import os
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .checkpoint_file import CKPT_NAME, FORMAT, CheckpointError, resolve  # noqa: F401 (torch-free; re-exported)
from .model import Discriminator, Generator, ModelConfig


def save(path: str | os.PathLike, cfg: ModelConfig, G: Generator, D: Discriminator, **extra: Any) -> Path:
    """Atomic: written to a temporary name, then renamed, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "gcomp_version": __version__,
        "model_config": asdict(cfg),
        "G": _plain(G).state_dict(),
        "D": _plain(D).state_dict(),
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _plain(m: torch.nn.Module) -> torch.nn.Module:
    """Unwrap DDP / torch.compile wrappers so state-dict keys never carry 'module.' prefixes."""
    m = getattr(m, "module", m)
    return getattr(m, "_orig_mod", m)


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    p = resolve(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of something else, random bytes
        # torch's own message is several sentences (miniz's) or a bare KeyError for bytes that are no zip at all
        why = (f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}" if zipfile.is_zipfile(p) and str(e).strip()
               else "not a PyTorch zip file: truncated, or another format")
        raise CheckpointError(f"{p}: not a readable checkpoint ({why})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a gcomp checkpoint (no '{FORMAT}' marker)")
    missing = {"model_config", "G", "D"} - state.keys()
    if missing:
        raise CheckpointError(f"{p}: checkpoint lacks {sorted(missing)}")
    return state


def load_models(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(config, G, D) in eval mode: BatchNorm uses running statistics, so images never affect each other."""
    state = load_state(path, map_location=device)
    try:
        cfg = ModelConfig(**state["model_config"])
        G, D = Generator(cfg), Discriminator(cfg)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{resolve(path)}: weights do not match the stored config ({e})") from None
    return cfg, G.to(device).eval(), D.to(device).eval()


def weights_id(*modules: torch.nn.Module) -> str:
    """A hash of the modules' weights (state dicts: names, dtypes, shapes, bytes), 16 hex digits. `gcomp export`
    stamps it (of G and D) on generator.onnx and step.onnx, `gcomp train-encoder` on encoder.onnx, so the
    runtime can refuse files exported from different checkpoints of the same architecture."""
    import hashlib

    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(_plain(m).state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
