"""The OpenVINO backend: the exported ONNX graphs on OpenVINO's CPU plugin, fp32 or bf16, no PyTorch.

OpenVINO reads the ONNX files directly. Compiled models are cached (OpenVINO's `CACHE_DIR`) in a
folder named by the SHA-256 of the two .onnx files, so a changed model is never served from a
stale entry. The cache lives beside the model, or in the user's cache folder when the model's
folder is read-only (the bundled model inside site-packages).

Precision: `bf16` sets INFERENCE_PRECISION_HINT=bf16 (weights and activations in bf16 inside
OpenVINO; the graph's inputs and outputs stay float32); `auto` picks bf16 only on CPUs with
native bf16 (AVX512_BF16 or AMX), where it is fast; elsewhere OpenVINO would emulate it slowly.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .base import Backend, BackendError
from .exported import export_info, model_files, onnx_metadata

PRECISIONS = ("auto", "fp32", "bf16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(flags_text: str | None = None) -> bool:
    """True where the CPU computes bf16 natively (read from /proc/cpuinfo's flags)."""
    if flags_text is None:
        try:
            flags_text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in flags_text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(f in flags for f in CPU_BF16_FLAGS)


def pick_precision(requested: str, native_bf16: bool | None = None) -> str:
    if requested not in PRECISIONS:
        raise BackendError(f"openvino precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return "bf16" if native else "fp32"


def cache_dir_for(model_folder: Path) -> Path:
    here = model_folder / ".openvino_cache"
    try:
        here.mkdir(exist_ok=True)
        if os.access(here, os.W_OK):
            return here
    except OSError:
        pass
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "gcomp" / "openvino"


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, model, device: str = "cpu", precision: str = "auto", threads: int | None = None,
                 streams: int | None = None):
        super().__init__()
        self.model = model
        self.device_name = device
        self.requested = precision
        self.threads = threads
        self.streams = streams

    def activate_impl(self) -> None:
        if self.device_name != "cpu":
            raise BackendError("the openvino backend runs on the CPU (--device cpu)")
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("the openvino backend needs OpenVINO: pip install 'gcomp[openvino]'") from None
        gen_path, step_path = model_files(self.model)
        self.info, self.unroll, self.fixed_batch = export_info(gen_path, onnx_metadata(gen_path),
                                                               step_path, onnx_metadata(step_path))
        self.precision = pick_precision(self.requested)
        core = ov.Core()
        # OpenVINO keys its cache on the file path, not the content (seen with 2026.4: a rewritten
        # .onnx was served from the old entry), so each content gets its own folder.
        digest = hashlib.sha256(gen_path.read_bytes() + step_path.read_bytes()).hexdigest()[:16]
        self.cache_dir = cache_dir_for(step_path.parent) / digest
        core.set_property({"CACHE_DIR": str(self.cache_dir)})
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.streams:
            config["NUM_STREAMS"] = int(self.streams)
        try:
            self.gen = core.compile_model(str(gen_path), "CPU", config).create_infer_request()
            self.step_req = core.compile_model(str(step_path), "CPU", config).create_infer_request()
        except RuntimeError as e:
            raise BackendError(f"{step_path.parent}: OpenVINO cannot compile it ({e})") from None

    def deactivate_impl(self) -> None:
        self.gen = self.step_req = None

    def generate(self, z: np.ndarray) -> np.ndarray:
        res = self.gen.infer({"z": np.ascontiguousarray(z, np.float32)})
        return np.array(res["image"])

    def step(self, z, v, y, w, lr, momentum, lam):
        f32 = np.float32
        res = self.step_req.infer({"z": np.ascontiguousarray(z, f32), "v": np.ascontiguousarray(v, f32),
                                   "y": np.ascontiguousarray(y, f32), "w": np.ascontiguousarray(w, f32),
                                   "lr": np.array(lr, f32), "momentum": np.array(momentum, f32),
                                   "lam": np.array(lam, f32)})
        return np.array(res["z_out"]), np.array(res["v_out"]), np.array(res["loss"])
