"""Backends, picked by name or, under 'auto', by what the model path is (Ultralytics' suffix table)."""
from __future__ import annotations

import inspect
from pathlib import Path

from .base import Backend, BackendError, ModelInfo, SearchResult

# name, file suffixes, the file that marks a model folder for it
FORMATS = (
    ("torch", (".pt", ".pth"), "checkpoint.pt"),
    ("onnxruntime", (".onnx",), "step.onnx"),
    ("tensorrt", (".engine", ".plan"), "step.engine"),
)
NAMES = tuple(f[0] for f in FORMATS) + ("openvino",)  # openvino reads the onnxruntime format


def backend_for(model: str | Path) -> str:
    p = Path(model)
    for name, suffixes, marker in FORMATS:
        if p.is_dir() and (p / marker).exists():
            return name
        if p.suffix.lower() in suffixes:
            return name
    raise BackendError(f"cannot tell which backend runs {model}: expected a .pt checkpoint, a run folder "
                       f"with checkpoint.pt, or an export folder with step.onnx / step.engine")


def open_backend(model: str | Path, backend: str = "auto", device: str = "cpu", **options) -> Backend:
    """An inactive backend for `model`; use it as a context manager or call activate().

    options go to the backend (threads, precision, streams, ...); one it does not take is an error.
    """
    if not Path(model).exists():
        raise BackendError(f"model not found: {model}")
    name = backend_for(model) if backend == "auto" else backend
    if name == "torch":
        from .torch_backend import TorchBackend as cls
    elif name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend as cls
    elif name == "openvino":
        from .openvino_backend import OpenVINOBackend as cls
    elif name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend as cls

        device = "cuda" if device == "cpu" else device
    else:
        raise BackendError(f"unknown backend {name!r} (choose from auto, {', '.join(NAMES)})")
    params = inspect.signature(cls.__init__).parameters
    wrong = [k for k in options if k not in params]
    if wrong:
        raise BackendError(f"{', '.join('--' + k for k in wrong)} does not apply to the {name} backend")
    return cls(model, device=device, **options)


__all__ = ["Backend", "BackendError", "ModelInfo", "SearchResult", "open_backend", "backend_for", "NAMES"]
