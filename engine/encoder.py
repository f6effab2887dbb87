"""Starting latents from the encoder that ships beside a model (`encoder.onnx`), run by ONNX Runtime.

The encoder maps (target image, mask) to a latent near the search's answer, so far fewer
iterations reach the quality of a long search from a random z. It runs through ONNX Runtime
whatever backend runs the search (one forward pass per image: no need for a device loop).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends.base import BackendError, ModelInfo
from .backends.exported import WEIGHTS_KEY

ENCODER_FILE = "encoder.onnx"
INITS = ("auto", "encoder", "random")


def find_encoder(model: str | Path) -> Path | None:
    p = Path(model)
    f = (p if p.is_dir() else p.parent) / ENCODER_FILE
    return f if f.is_file() else None


class Encoder:
    def __init__(self, path: Path, info: ModelInfo):
        import onnxruntime as ort

        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(f"{path}: ONNX Runtime cannot load the encoder ({e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("gcomp_kind") != "encoder":
            raise BackendError(f"{path}: not a gcomp encoder (metadata gcomp_kind={meta.get('gcomp_kind')!r})")
        if info.config_hash and meta.get("config_hash") != info.config_hash:
            raise BackendError(f"{path}: the encoder was trained for another generator (config hash "
                               f"{meta.get('config_hash')} vs {info.config_hash}); use --init random")
        theirs, ours = meta.get(WEIGHTS_KEY), info.meta.get(WEIGHTS_KEY)
        if (theirs is not None or ours is not None) and theirs != ours:
            raise BackendError(f"{path}: the encoder was trained for another checkpoint's generator (weights ids "
                               f"{theirs} vs {ours}); use --init random, or train one for this model")

    def __call__(self, y: np.ndarray, known: np.ndarray) -> np.ndarray:
        z = self.session.run(["z"], {"image": np.ascontiguousarray(y, np.float32),
                                     "mask": np.ascontiguousarray(known, np.float32)})[0]
        return np.clip(z, -1, 1).astype(np.float32)


def load_encoder(model: str | Path, info: ModelInfo, init: str) -> Encoder | None:
    """The encoder for `init`: 'auto' uses it when the model has one, 'encoder' requires it."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        return None
    path = find_encoder(model)
    if path is None:
        if init == "encoder":
            raise BackendError(f"--init encoder: no {ENCODER_FILE} beside {model}")
        return None
    return Encoder(path, info)
