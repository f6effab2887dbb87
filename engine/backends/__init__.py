"""Backends, picked by name or, under 'auto', by what the model path is (Ultralytics' suffix table)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .base import Backend, BackendError, ModelInfo, SearchResult


@dataclass(frozen=True)
class Format:
    """One row of the formats table: a backend, the class that runs it, and the model files it runs."""

    name: str
    module: str  # engine/backends/<module>.py, imported only when this backend is used
    cls: str
    suffixes: tuple[str, ...]  # model files it runs
    marker: str  # the file that marks a model folder for it
    devices: str
    needs: str  # its runtime's pip install


# The single source of truth for backends (Ultralytics' habit): names, suffixes, picking one by file.
# Under --backend auto the first row whose suffix or marker matches wins (openvino shares onnxruntime's
# files; auto_backend moves an ONNX export to it where that pays).
FORMATS = (
    Format("torch", "torch_backend", "TorchBackend", (".pt", ".pth"), "checkpoint.pt", "cpu, cuda", "gcomp[train]"),
    Format("onnxruntime", "onnxruntime_backend", "OnnxRuntimeBackend", (".onnx",), "step.onnx", "cpu, cuda",
           "onnxruntime (or onnxruntime-gpu)"),
    Format("openvino", "openvino_backend", "OpenVINOBackend", (".onnx",), "step.onnx", "cpu", "gcomp[openvino]"),
    Format("tensorrt", "tensorrt_backend", "TensorRTBackend", (".engine", ".plan"), "step.engine", "cuda",
           "tensorrt or tensorrt-rtx, cuda-python"),
)
NAMES = tuple(f.name for f in FORMATS)


def backend_for(model: str | Path) -> str:
    p = Path(model)
    for f in FORMATS:
        if p.is_dir() and (p / f.marker).exists():
            return f.name
        if p.suffix.lower() in f.suffixes:
            return f.name
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
    for f in FORMATS:
        if f.name == name:
            return getattr(importlib.import_module(f"{__name__}.{f.module}"), f.cls)
    raise BackendError(f"unknown backend {name!r} (choose from auto, {', '.join(NAMES)})")


def check_torch_model(model: str | Path) -> None:
    """The torch backend runs training checkpoints only. An export given to it (the bundled model is one) is named
    as such, with the backends that run it, instead of torch's "no checkpoint at ..." or an unpickling error."""
    p = Path(model)
    torch_fmt = FORMATS[0]
    if (p / torch_fmt.marker).exists() if p.is_dir() else p.suffix.lower() in torch_fmt.suffixes:
        return
    runs = [f.name for f in FORMATS[1:] if ((p / f.marker).exists() if p.is_dir() else p.suffix.lower() in f.suffixes)]
    if runs:
        kind = ("a TensorRT export" if runs == ["tensorrt"] else "an ONNX export") + ("" if p.is_dir() else "'s graph")
        raise BackendError(f"{model} is {kind}, not a training checkpoint: the torch backend (--backend torch) needs "
                           f"a .pt file or a run folder with {torch_fmt.marker}; run this export with "
                           f"{' or '.join(runs)} (--backend {runs[0]}, or leave --backend auto)")


DEVICES = ("cpu", "cuda", "cuda:N")


def check_device(device: str) -> None:
    """cpu, cuda or cuda:N; anything else is refused before any work (it would otherwise run on the CPU)."""
    import re

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise BackendError(f"--device {device!r}: unknown device (choose cpu, cuda or cuda:N)")


API_ONLY = ("kernels", "fast")  # backend options `gcomp complete` has no flag for


def open_backend(model: str | Path, backend: str = "auto", device: str = "cpu", **options) -> Backend:
    """An inactive backend for `model`; use it as a context manager or call activate().

    options go to the backend (threads, precision, streams, ...); one it does not take is an error.
    """
    allow_unvalidated = bool(options.pop("allow_unvalidated", False))
    check_device(device)
    if not Path(model).exists():
        raise BackendError(f"model not found: {model}")
    name, why = auto_backend(model, device) if backend == "auto" else (backend, "")
    cls = backend_class(name)
    if name == "torch":
        check_torch_model(model)
    fmt = next(f for f in FORMATS if f.name == name)
    warnings, digests = [], {}
    if name != "torch":  # gcomp export's files: the path must name the graphs, and their validation must have passed
        from .exported import check_model_path, check_validation

        warnings = check_validation(check_model_path(model, fmt.suffixes), allow_unvalidated, digests)
    if name == "tensorrt":
        device = "cuda" if device == "cpu" else device
    if device.split(":")[0] not in [d.strip() for d in fmt.devices.split(",")]:
        raise BackendError(f"--device {device}: the {name} backend runs on {fmt.devices} only")
    for k in ("threads", "streams"):  # counts of CPU threads / concurrent requests
        if options.get(k) is not None and (isinstance(options[k], bool) or not isinstance(options[k], int) or options[k] < 1):
            raise BackendError(f"--{k} must be a positive integer, got {options[k]!r}")
    wrong = [k for k in options if k not in cls.options]
    if wrong:
        chose = f" (--backend auto chose {why})" if why else ""
        # options with a CLI flag are named as flags, the Python-only ones (kernels, fast) as keywords
        named = ", ".join(f"{k}=" if k in API_ONLY else "--" + k.replace("_", "-") for k in wrong)
        raise BackendError(f"{named} does not apply to the {name} backend{chose}")
    be = cls(model, device=device, **options)
    be.notes.extend(warnings)
    be.file_digests = digests  # the sha256 the check took: OpenVINO names its cache by them without reading again
    if why and name == "openvino":  # the one choice a user might not expect
        be.notes.append(f"--backend auto: {why}")
    if options.get("cuda_graph") is not None and not device.startswith("cuda"):  # taken, but does nothing here
        be.notes.append(f"--cuda-graph applies on CUDA only: no effect on {device}")
    return be


__all__ = ["Backend", "BackendError", "ModelInfo", "SearchResult", "open_backend", "auto_backend", "backend_for",
           "backend_class", "check_device", "check_torch_model", "FORMATS", "NAMES", "DEVICES"]
