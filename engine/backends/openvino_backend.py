"""The OpenVINO backend: the exported ONNX graphs on OpenVINO's CPU plugin, fp32 or bf16, no PyTorch.

OpenVINO reads the ONNX files directly. Compiled models are cached (OpenVINO's `CACHE_DIR`) in a
folder named by the SHA-256s of the two .onnx files, so a changed model is never served from a
stale entry. The cache lives beside the model, or in the user's cache folder when the model's
folder is read-only (the bundled model inside site-packages).

Precision: `bf16` sets INFERENCE_PRECISION_HINT=bf16 (weights and activations in bf16 inside
OpenVINO; the graph's inputs and outputs stay float32); `auto` picks bf16 only on CPUs with
native bf16 (AVX512_BF16 or AMX), where it is fast; elsewhere OpenVINO would emulate it slowly.
At bf16 both graphs are compiled from copies whose transposed convolutions are sub-pixel convolutions
(subpixel.py; OpenVINO leaves transposed ones in f32 on a graph's tail): gf = 64, batch 64, 2-core Xeon with AMX,
generator 106 -> 29 ms per call, step 196 -> 111 ms.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..cpu import CPU_BF16_FLAGS, cpu_has_native_bf16  # noqa: F401 (re-exported)
from .base import Backend, BackendError, split_batch
from .exported import (GENERATOR_INPUT, GENERATOR_OUTPUT, STEP_OUTPUTS, export_info, file_sha256, model_files,
                       onnx_metadata, step_feed)

PRECISIONS = ("auto", "fp32", "bf16")


def pick_precision(requested: str, native_bf16: bool | None = None) -> str:
    if requested not in PRECISIONS:
        raise BackendError(f"openvino precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return "bf16" if native else "fp32"


SUBPIXEL_SUFFIX = "-subpixel-v2.onnx"  # a new rewrite gets a new name: no stale copy is ever read


def subpixel_copy(path: Path, cache_dir: Path) -> Path:
    """The graph with its transposed convolutions as sub-pixel convolutions (subpixel.py), written once into the
    model's cache folder (named by the graphs' content), or `path` itself when it has none to rewrite."""
    out = cache_dir / (path.stem + SUBPIXEL_SUFFIX)
    if out.is_file():
        return out
    import onnx

    from .subpixel import rewrite

    from ..images import write_atomic

    model = onnx.load(str(path))
    if not rewrite(model):
        return path
    write_atomic(out, model.SerializeToString())  # whole or not at all: another process may be opening it
    return out


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
    serial = True  # infer requests / execution contexts: one call at a time (base.Backend.serial)
    options = ("precision", "threads", "streams")

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
        if self.requested == "auto":
            why = "this CPU has native bf16" if self.precision == "bf16" else "this CPU has no native bf16 (AVX512_BF16/AMX)"
            self.notes.append(f"openvino: inference precision {self.precision} (--precision auto: {why})")
        core = ov.Core()
        # OpenVINO keys its cache on the file path, not the content (seen with 2026.4: a rewritten
        # .onnx was served from the old entry), so each content gets its own folder.
        # The files' sha256 as the validation check took them (file_digests): each graph is read once per open.
        digest = hashlib.sha256(" ".join(file_sha256(p, self.file_digests) for p in (gen_path, step_path))
                                .encode()).hexdigest()[:16]
        self.cache_dir = cache_dir_for(step_path.parent) / digest
        core.set_property({"CACHE_DIR": str(self.cache_dir)})
        n = self.n_streams = self.streams or 1
        # One stream: all threads on one request (LATENCY). Several: the batch is split across that
        # many requests run at once, each stream on its share of the threads (THROUGHPUT).
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY" if n == 1 else "THROUGHPUT", "NUM_STREAMS": n}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        # the encoder runs here too, as one request on all threads at this precision (engine/encoder.py)
        self.encoder_openvino = {**config, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            # at bf16 the transposed convolutions run as sub-pixel convolutions (subpixel.py: OpenVINO leaves
            # transposed ones in f32 on a graph's tail); fp32 compiles the graphs as exported
            gen_file, step_file = ((subpixel_copy(p, self.cache_dir) for p in (gen_path, step_path))
                                   if self.precision == "bf16" else (gen_path, step_path))
            self.gen = core.compile_model(str(gen_file), "CPU", config).create_infer_request()
            step_model = core.compile_model(str(step_file), "CPU", config)
        except RuntimeError as e:
            raise BackendError(f"{step_path.parent}: OpenVINO cannot compile it ({e})") from None
        self.step_reqs = [step_model.create_infer_request() for _ in range(n)]
        # OpenVINO quietly computes in f32 where the CPU lacks bf16 (OPTIMIZATION_CAPABILITIES has no
        # BF16, e.g. AVX2-only CPUs): report what it runs, not what was asked.
        ran = "bf16" if step_model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"
        if ran != self.precision:
            self.notes.append(f"openvino: {self.precision} was asked for but this CPU has no bf16 support; "
                              f"OpenVINO computes in {ran}")
            self.precision = ran

    def deactivate_impl(self) -> None:
        self.gen = self.step_reqs = None

    def settings(self) -> dict:
        return super().settings() | {"precision": self.precision, "threads": self.threads,
                                     "streams": self.n_streams}

    def generate_impl(self, z: np.ndarray) -> np.ndarray:
        res = self.gen.infer({GENERATOR_INPUT: np.ascontiguousarray(z, np.float32)})
        return np.array(res[GENERATOR_OUTPUT])

    def step(self, z, v, y, w, lr, momentum, lam):
        feeds = split_batch(step_feed(z, v, y, w, lr, momentum, lam), self.n_streams)
        reqs = self.step_reqs[:len(feeds)]
        for req, feed in zip(reqs, feeds):
            req.start_async(feed)
        for req in reqs:
            req.wait()
        return tuple(np.concatenate([np.array(r.get_tensor(name).data) for r in reqs])
                     for name in STEP_OUTPUTS)
