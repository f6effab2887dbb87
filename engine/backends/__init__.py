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


def auto_backend(model: str | Path, device: str = "cpu", native_bf16: bool | None = None) -> tuple[str, str]:
    """(backend, why) for `--backend auto`: by what the model is; an ONNX export on the CPU goes to
    OpenVINO where it is installed and the CPU computes bf16 natively (AVX512_BF16 / AMX), where its
    bf16 inference measured 1.9x ONNX Runtime's fp32; elsewhere to ONNX Runtime, which measured as fast
    or faster than OpenVINO in fp32 (benchmarks/results/)."""
    name = backend_for(model)
    if name != "onnxruntime" or device != "cpu":
        return name, f"{name}: chosen by the model's file type"
    import importlib.util

    from .openvino_backend import cpu_has_native_bf16

    if importlib.util.find_spec("openvino") is None:
        return name, "onnxruntime: an ONNX export on the CPU (OpenVINO is not installed)"
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if native:
        return "openvino", "openvino: an ONNX export on a CPU with native bf16, and OpenVINO is installed"
    return name, "onnxruntime: an ONNX export on a CPU without native bf16 (OpenVINO is no faster there)"


def backend_class(name: str) -> type[Backend]:
    """The class of a backend, imported only when asked for (each pulls in its own runtime)."""
    if name == "torch":
        from .torch_backend import TorchBackend as cls
    elif name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend as cls
    elif name == "openvino":
        from .openvino_backend import OpenVINOBackend as cls
    elif name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend as cls
    else:
        raise BackendError(f"unknown backend {name!r} (choose from auto, {', '.join(NAMES)})")
    return cls


def open_backend(model: str | Path, backend: str = "auto", device: str = "cpu", **options) -> Backend:
    """An inactive backend for `model`; use it as a context manager or call activate().

    options go to the backend (threads, precision, streams, ...); one it does not take is an error.
    """
    if not Path(model).exists():
        raise BackendError(f"model not found: {model}")
    name, why = auto_backend(model, device) if backend == "auto" else (backend, "")
    cls = backend_class(name)
    if name == "tensorrt":
        device = "cuda" if device == "cpu" else device
    params = inspect.signature(cls.__init__).parameters
    wrong = [k for k in options if k not in params]
    if wrong:
        chose = f" (--backend auto chose {why})" if why else ""
        raise BackendError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} does not apply to the {name} backend{chose}")
    be = cls(model, device=device, **options)
    if why and name == "openvino":  # the one choice a user might not expect
        be.notes.append(f"--backend auto: {why}")
    return be


__all__ = ["Backend", "BackendError", "ModelInfo", "SearchResult", "open_backend", "auto_backend", "backend_for", "backend_class", "NAMES"]
