"""The OpenVINO backend: the exported ONNX graphs on OpenVINO's CPU plugin, fp32 or bf16, no PyTorch.

OpenVINO reads the ONNX files directly. Compiled fp32 models are cached (OpenVINO's `CACHE_DIR`; bf16 is
not, see below) in a folder named by the SHA-256s of the two .onnx files, so a changed model is never served
from a stale entry. The cache lives beside the model, or in the user's cache folder when the model's
folder is read-only (the bundled model inside site-packages).

Precision: `bf16` sets INFERENCE_PRECISION_HINT=bf16 (weights and activations in bf16 inside
OpenVINO; the graph's inputs and outputs stay float32); `auto` picks bf16 only on CPUs with
native bf16 (AVX512_BF16 or AMX), where it is fast; elsewhere OpenVINO would emulate it slowly.

OpenVINO's CPU plugin keeps a graph's "tail" in f32: walking back from each output it stops only at
Convolution, FullyConnected, MatMul (and a few more) nodes, never at a transposed convolution
(ConvolutionBackpropData). In the generator every ConvTranspose lies behind the last FullyConnected, and in
the step graph the generator's four lie on the loss output's tail, so at bf16 they ran in f32
(brgconv_avx512_f32): measured on a 2-core Xeon with AMX (OpenVINO 2026.4, batch 64), the gf = 64 generator
102 ms per call, the step 181 ms. Those nodes are marked `enforceBF16evenForGraphTail` (the plugin's own
runtime-info switch), which puts them on the AMX kernels: generator 33 ms, step 112 ms. Only transposed
convolutions are marked (from BF16_TAIL_MIN_CHANNELS up); the element-wise tail (Tanh, the latent's update, the
loss) stays f32.
A compiled model read back from OpenVINO's cache has lost the marks, so bf16 is compiled afresh each time.
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
#: the node types OpenVINO's bf16 pass leaves in f32 on a graph's tail, and the switch that overrides it (see above)
BF16_TAIL_OPS = ("ConvolutionBackpropData",)
BF16_TAIL_KEY = "enforceBF16evenForGraphTail"
#: only transposed convolutions with at least this many input and output channels are marked: the last layer (to
#: 3 channels) and tiny test models stay as OpenVINO leaves them. With every one marked, the test suite's process
#: (hundreds of small models opened on a Xeon with AMX, OpenVINO 2026.4) crashed with SIGSEGV minutes later; marked
#: from 16 channels up it ran clean.
BF16_TAIL_MIN_CHANNELS = 16


def pick_precision(requested: str, native_bf16: bool | None = None) -> str:
    if requested not in PRECISIONS:
        raise BackendError(f"openvino precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return "bf16" if native else "fp32"


def read_model(core, path: Path, precision: str):
    """The ONNX graph as OpenVINO compiles it: at bf16, its transposed convolutions marked to run in bf16 even on
    the graph's tail (see the module's docstring)."""
    model = core.read_model(str(path))
    if precision == "bf16":
        for op in model.get_ops():
            if op.get_type_name() in BF16_TAIL_OPS and _channels(op) >= BF16_TAIL_MIN_CHANNELS:
                op.set_rt_info(True, BF16_TAIL_KEY)
    return model


def _channels(op) -> int:
    """A transposed convolution's fewer channels, in or out (its weights: [in, out, kH, kW]; 0 if not static)."""
    w = op.get_input_partial_shape(1)
    return min(w[0].get_length(), w[1].get_length()) if w.rank.is_static and w[0].is_static and w[1].is_static else 0


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
    options = ("precision", "threads", "streams")

    def __init__(self, model, device: str = "cpu", precision: str = "auto", threads: int | None = None,
                 streams: int | None = None):
        super().__init__()
        self.model = model
        self.device_name = device
        self.requested = precision
        self.threads = threads
        self.streams = streams
        self._held: list | None = None  # what activate compiled from (see there)

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
        # bf16 compiles uncached: a cached blob is re-read without the tail marks (read_model), which put the
        # transposed convolutions back in f32 (seen with 2026.4); compiling both graphs costs ~0.3 s on 2 cores
        if self.precision != "bf16":
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
            graphs = [read_model(core, p, self.precision) for p in (gen_path, step_path)]
            gen_model, step_model = (core.compile_model(g, "CPU", config) for g in graphs)
            self.gen = gen_model.create_infer_request()
        except RuntimeError as e:
            raise BackendError(f"{step_path.parent}: OpenVINO cannot compile it ({e})") from None
        self.step_reqs = [step_model.create_infer_request() for _ in range(n)]
        # the core, the graphs read and the compiled models live as long as the requests and are released with them
        # in deactivate, in that order, not by the garbage collector at some later moment (a graph read into Python
        # and dropped after compiling crashed the process later, at a Ray shutdown, with torch loaded)
        self._held = [gen_model, step_model, graphs, core]
        # OpenVINO quietly computes in f32 where the CPU lacks bf16 (OPTIMIZATION_CAPABILITIES has no
        # BF16, e.g. AVX2-only CPUs): report what it runs, not what was asked.
        ran = "bf16" if step_model.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"
        if ran != self.precision:
            self.notes.append(f"openvino: {self.precision} was asked for but this CPU has no bf16 support; "
                              f"OpenVINO computes in {ran}")
            self.precision = ran

    def deactivate_impl(self) -> None:
        self.gen = self.step_reqs = None
        held, self._held = self._held or [], None
        while held:
            held.pop(0)  # compiled models, then the graphs, then the core

    def settings(self) -> dict:
        return super().settings() | {"precision": self.precision, "threads": self.threads,
                                     "streams": self.n_streams}

    def generate_impl(self, z: np.ndarray) -> np.ndarray:
        # the input is read in place and the output copied once (infer's defaults copy both, np.array again)
        res = self.gen.infer({GENERATOR_INPUT: np.ascontiguousarray(z, np.float32)}, share_inputs=True,
                             share_outputs=True)
        return np.array(res[GENERATOR_OUTPUT])

    def step(self, z, v, y, w, lr, momentum, lam):
        feeds = split_batch(step_feed(z, v, y, w, lr, momentum, lam), self.n_streams)
        reqs = self.step_reqs[:len(feeds)]
        for req, feed in zip(reqs, feeds):
            req.start_async(feed, share_inputs=True)  # read in place: feeds outlive the wait below
        for req in reqs:
            req.wait()
        return tuple(np.concatenate([np.array(r.get_tensor(name).data) for r in reqs])
                     for name in STEP_OUTPUTS)
