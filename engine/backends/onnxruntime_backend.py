"""The ONNX Runtime backend: runs `gcomp export`'s generator.onnx and step.onnx, with no PyTorch.

CPU: plain session runs by default (the arrays live in host memory anyway); intra-op threads are exposed.
CUDA: the search keeps z and v on the GPU in two ping-pong buffer pairs bound with IO binding, so only
each call's [B] losses cross to the host inside the loop; with a fixed batch, each direction (A->B, B->A)
is captured once as a CUDA graph (ORT's `gpu_graph_id`) and replayed. The same IO-binding loop runs on
CPU with io_binding=True (that is how its logic is tested without a GPU).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..cpu import usable_cores
from ..search import SearchParams
from .base import Backend, BackendError, DeviceLoop, SearchResult, split_batch
from .exported import GENERATOR_INPUT, GENERATOR_OUTPUT, STEP_OUTPUTS, export_info, model_files, step_feed

MIN_PER_STREAM = 4  # below this many images per stream one session on all threads is faster (batch 1: 1.6x)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    options = ("threads", "streams", "cuda_graph", "io_binding")

    def __init__(self, model, device: str = "cpu", threads: int | None = None, streams: int | None = None,
                 cuda_graph: bool = True, io_binding: bool | None = None):
        """threads: CPU threads in all (default: ONNX Runtime's, one per core); streams (CPU): the batch
        is split across this many sessions run at once, each with threads / streams threads;
        io_binding: search with the IO-binding ping-pong loop; None = on CUDA only."""
        super().__init__()
        self.model = model
        self.device_name = device
        self.threads = threads
        self.streams = streams
        self.cuda_graph = cuda_graph
        self.io_binding = io_binding

    # -- lifecycle --------------------------------------------------------------------------
    def activate_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs ONNX Runtime: pip install onnxruntime "
                               "(or onnxruntime-gpu for CUDA; see the README)") from None
        self.ort = ort
        gen_path, step_path = model_files(self.model)
        self.on_cuda = self.device_name.startswith("cuda")
        self.device_id = int(self.device_name.split(":")[1]) if ":" in self.device_name else 0
        if self.on_cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError(f"--device {self.device_name}: this ONNX Runtime has no CUDA provider "
                               f"(has {', '.join(ort.get_available_providers())}); "
                               "pip uninstall onnxruntime && pip install onnxruntime-gpu")
        if self.on_cuda and (self.streams or 1) > 1:
            raise BackendError("--streams is a CPU setting (on CUDA, use one large batch)")
        cores = self.threads or usable_cores()  # ONNX Runtime's own default: the affinity mask
        # Default one stream: on 2 cores, two sessions on one core each measured from 0.99x to 1.13x one
        # session on both at batch 16-64 depending on the run (benchmarks/results/amd-epyc-2c.md), not a
        # gain to make the default on; `--streams` is there to try on larger CPUs.
        n = self.streams or 1
        self.n_streams = n
        # The generator's pool does not spin after a call: the job's other threads (decode, blend, write) want
        # the cores then (2-core AVX2 EPYC, 9,250 faces, gf = 32, 0 iterations: 1.14-1.24x end to end). The step's
        # pool spins: a search calls it back to back, and without spinning it measured 0.8x.
        self.gen = self._session(gen_path, graph=False, spin=False)
        self.step_sess = self._session(step_path, graph=False)  # all threads: small batches, IO binding
        self.stream_sessions = [self._session(step_path, graph=False, threads=max(1, cores // n))
                                for _ in range(n)] if n > 1 else []
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="gcomp-ort") if n > 1 else None
        self.info, self.unroll, self.fixed_batch = export_info(
            gen_path, self.gen.get_modelmeta().custom_metadata_map,
            step_path, self.step_sess.get_modelmeta().custom_metadata_map)
        self.step_path, self._bound = step_path, None
        self.step_graph_sess = self._graph_session() if self.on_cuda and self.cuda_graph and self.fixed_batch else None

    def _graph_session(self):
        """A second session of the step graph with CUDA graph capture on (fixed shapes only), or None with
        a note where ORT refuses one (capture needs every node on the CUDA provider)."""
        try:
            return self._session(self.step_path, graph=True)
        except BackendError as e:
            self.notes.append(f"onnxruntime: no CUDA graph for this model, plain CUDA runs instead ({e})")
            return None

    def _session(self, path: Path, graph: bool, threads: int | None = None, spin: bool = True):
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or self.threads
        if threads:
            so.intra_op_num_threads = threads
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.on_cuda:
            opts = {"device_id": self.device_id}
            if graph:
                opts["enable_cuda_graph"] = "1"
            providers = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            return ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # ORT raises its own exception types for bad files
            raise BackendError(f"{path}: ONNX Runtime cannot load it ({e})") from None

    def deactivate_impl(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        self.gen = self.step_sess = self.step_graph_sess = self.stream_sessions = self.pool = self._bound = None

    def settings(self) -> dict:
        return super().settings() | {"threads": self.threads, "streams": self.n_streams,
                                     "io_binding": self.on_cuda if self.io_binding is None else self.io_binding}

    # -- inference ---------------------------------------------------------------------------
    def generate_impl(self, z: np.ndarray) -> np.ndarray:
        return self.gen.run([GENERATOR_OUTPUT], {GENERATOR_INPUT: np.ascontiguousarray(z, np.float32)})[0]

    def step(self, z, v, y, w, lr, momentum, lam):
        """One call of the step graph: `unroll` steps; loss is at the input z."""
        feed = step_feed(z, v, y, w, lr, momentum, lam)
        if self.n_streams == 1 or len(z) < MIN_PER_STREAM * self.n_streams:  # one session, every thread
            return tuple(self.step_sess.run(list(STEP_OUTPUTS), feed))
        feeds = split_batch(feed, self.n_streams)
        outs = list(self.pool.map(lambda sf: sf[0].run(list(STEP_OUTPUTS), sf[1]), zip(self.stream_sessions, feeds)))
        return tuple(np.concatenate(part) for part in zip(*outs))  # ONNX Runtime releases the GIL in run()

    def search_impl(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        bound = self.on_cuda if self.io_binding is None else self.io_binding
        if not bound:
            return self.host_search(z0, y, w, hp, callback)
        return self._search_bound(z0, y, w, hp, callback)

    def _search_bound(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        """Device-resident loop: z/v ping-pong between two OrtValue pairs (call k reads pair k % 2 and
        writes the other), so per call only the [B] losses come to the host (DeviceLoop: early stopping
        and history as the host loop has them)."""
        t0 = time.perf_counter()
        sess, bufs, losses, bindings = self._bound_buffers(z0, y, w, hp)
        loop = DeviceLoop(len(z0), hp.patience, self.unroll)
        cur = 0  # the pair holding the latest z
        for call in range(hp.iters // self.unroll):
            b, ro = bindings[cur]
            sess.run_with_iobinding(b, ro)
            src, cur = cur, 1 - cur
            done = loop.record(losses[src].numpy(), lambda: bufs[src][0].numpy())
            if callback is not None:
                callback((call + 1) * self.unroll - 1, loop.latents(bufs[cur][0].numpy()))
            if done:
                break
        z = loop.latents(bufs[cur][0].numpy())
        final = self.loss(z, y, w, hp.lam)
        return SearchResult(z=z, loss=final, history=loop.history, seconds=time.perf_counter() - t0)

    def _bound_buffers(self, z0, y, w, hp: SearchParams):
        """The OrtValues and bindings of the ping-pong loop, made once per shape and then refilled in
        place: a captured CUDA graph replays the device addresses it was captured with (ORT keys graphs
        by gpu_graph_id only), so later searches must write into the same buffers (update_inplace)."""
        f32 = np.float32
        inputs = {"z": z0, "v": np.zeros_like(z0), "y": y, "w": w, "lr": hp.step_lr, "momentum": hp.momentum,
                  "lam": hp.lam}
        inputs = {k: np.ascontiguousarray(v, f32) for k, v in inputs.items()}
        key = tuple(a.shape for a in inputs.values())
        if self._bound is not None and self._bound[0] == key:
            _, sess, bufs, consts, losses, bindings = self._bound
            bufs[0][0].update_inplace(inputs["z"])
            bufs[0][1].update_inplace(inputs["v"])
            for name, val in consts.items():
                val.update_inplace(inputs[name])
            return sess, bufs, losses, bindings
        ort = self.ort
        dev, did = ("cuda", self.device_id) if self.on_cuda else ("cpu", 0)
        if self._bound is not None and self.step_graph_sess is not None:
            self.step_graph_sess = self._graph_session()  # new shapes: new graphs, in a new session
        sess = self.step_graph_sess or self.step_sess

        def ov(a):  # a fresh array each: on 'cpu' an OrtValue wraps the array's memory, so none may share one
            return ort.OrtValue.ortvalue_from_numpy(np.array(a, f32), dev, did)

        zero = inputs["v"]
        bufs = [(ov(inputs["z"]), ov(zero)), (ov(zero), ov(zero))]
        consts = {name: ov(inputs[name]) for name in ("y", "w", "lr", "momentum", "lam")}
        losses = [ov(np.zeros(len(z0))) for _ in range(2)]
        bindings = []
        for src in (0, 1):
            b = sess.io_binding()
            (zi, vi), (zo, vo) = bufs[src], bufs[1 - src]
            for name, val in (("z", zi), ("v", vi), *consts.items()):
                b.bind_ortvalue_input(name, val)
            b.bind_ortvalue_output("z_out", zo)
            b.bind_ortvalue_output("v_out", vo)
            b.bind_ortvalue_output("loss", losses[src])
            ro = ort.RunOptions()
            if self.step_graph_sess is not None:
                ro.add_run_config_entry("gpu_graph_id", str(src + 1))  # one captured graph per direction
            bindings.append((b, ro))
        self._bound = (key, sess, bufs, consts, losses, bindings)
        return sess, bufs, losses, bindings
