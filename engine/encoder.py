"""Starting latents from the encoder that ships beside a model (`encoder.onnx`).

The encoder maps (target image, mask) to a latent near the search's answer, so far fewer
iterations reach the quality of a long search from a random z. One forward pass per image: no device
loop. It runs on the search backend's CPU runtime: OpenVINO (with its precision and threads) when that is
the backend, else ONNX Runtime. Measured on a 2-core AMD EPYC with AVX512_BF16, batch 64, gf = 64: ONNX
Runtime 80 ms, OpenVINO bf16 30 ms; and an ONNX Runtime pool beside OpenVINO's keeps spinning after each
call, slowing the generator call that follows (131 against 81 ms): so ONNX Runtime's threads do not spin here.
"""
from __future__ import annotations

import threading
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
    def __init__(self, path: Path, info: ModelInfo, openvino: dict | None = None):
        """openvino: an OpenVINO CPU compile config (the search backend's) to run it there; None: ONNX Runtime."""
        from .backends.exported import onnx_metadata

        self.path = path
        meta = onnx_metadata(path)
        if meta.get("gcomp_kind") != "encoder":
            raise BackendError(f"{path}: not a gcomp encoder (metadata gcomp_kind={meta.get('gcomp_kind')!r})")
        if info.config_hash and meta.get("config_hash") != info.config_hash:
            raise BackendError(f"{path}: the encoder was trained for another generator (config hash "
                               f"{meta.get('config_hash')} vs {info.config_hash}); use --init random")
        theirs, ours = meta.get(WEIGHTS_KEY), info.meta.get(WEIGHTS_KEY)
        if (theirs is not None or ours is not None) and theirs != ours:
            raise BackendError(f"{path}: the encoder was trained for another checkpoint's generator (weights ids "
                               f"{theirs} vs {ours}); use --init random, or train one for this model")
        self.runtime = "openvino" if openvino is not None else "onnxruntime"
        self._request = self._compiled = self._core = self.session = None
        self._turns = threading.Lock()
        try:
            if openvino is not None:
                import openvino as ov

                # the core and compiled model are kept with the request, and all three released by close(), not by
                # the garbage collector at some later moment (seen to crash the process once torch was loaded)
                self._core = ov.Core()
                self._compiled = self._core.compile_model(str(path), "CPU", dict(openvino))
                self._request = self._compiled.create_infer_request()
            else:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module's docstring
                self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(f"{path}: {self.runtime} cannot load the encoder ({e})") from None

    def close(self) -> None:
        """Release the runtime's objects (the model that opened this encoder calls it when it closes)."""
        self._request = self._compiled = self._core = self.session = None

    def __call__(self, y: np.ndarray, known: np.ndarray) -> np.ndarray:
        if self._request is None and self.session is None:
            raise BackendError(f"{self.path}: this encoder was closed (its model's `with` block ended, or close() "
                               "was called): take one from an open model, model.encoder()")
        feeds = {"image": np.ascontiguousarray(y, np.float32), "mask": np.ascontiguousarray(known, np.float32)}
        if self.runtime == "openvino":
            with self._turns:  # an infer request runs one call at a time (base.Backend.serial)
                z = np.array(self._request.infer(feeds)["z"])
        else:
            z = self.session.run(["z"], feeds)[0]
        return np.clip(z, -1, 1).astype(np.float32)


def load_encoder(model: str | Path, info: ModelInfo, init: str, openvino: dict | None = None) -> Encoder | None:
    """The encoder for `init`: 'auto' uses it when the model has one, 'encoder' requires it. openvino: see
    Encoder (a backend's `encoder_openvino`)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "random":
        return None
    path = find_encoder(model)
    if path is None:
        if init == "encoder":
            raise BackendError(f"--init encoder: no {ENCODER_FILE} beside {model}")
        return None
    return Encoder(path, info, openvino)
