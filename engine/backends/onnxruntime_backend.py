"""The ONNX Runtime backend: runs `gcomp export`'s generator.onnx and step.onnx, with no PyTorch.

CPU: plain session runs (the arrays live in host memory anyway); intra-op threads are exposed.
CUDA: the search keeps z and v on the GPU in two ping-pong buffer pairs bound with IO binding,
so nothing crosses to the host inside the loop; with a fixed batch and unroll, each direction
(A->B, B->A) is captured once as a CUDA graph (ORT's `gpu_graph_id`) and replayed.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..search import SearchParams
from .base import Backend, BackendError, SearchResult
from .exported import export_info, model_files


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model, device: str = "cpu", threads: int | None = None, cuda_graph: bool = True):
        super().__init__()
        self.model = model
        self.device_name = device
        self.threads = threads
        self.cuda_graph = cuda_graph

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
        self.gen = self._session(gen_path, graph=False)
        self.step_sess = self._session(step_path, graph=False)
        self.info, self.unroll, self.fixed_batch = export_info(
            gen_path, self.gen.get_modelmeta().custom_metadata_map,
            step_path, self.step_sess.get_modelmeta().custom_metadata_map)
        if self.on_cuda and self.cuda_graph and self.fixed_batch:
            # A second session of the step graph, with CUDA graph capture on (fixed shapes only).
            self.step_graph_sess = self._session(step_path, graph=True)
        else:
            self.step_graph_sess = None

    def _session(self, path: Path, graph: bool):
        ort = self.ort
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = self.threads
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
        self.gen = self.step_sess = self.step_graph_sess = None

    # -- inference ---------------------------------------------------------------------------
    def generate(self, z: np.ndarray) -> np.ndarray:
        return self.gen.run(["image"], {"z": np.ascontiguousarray(z, np.float32)})[0]

    def _feed(self, z, v, y, w, lr, momentum, lam) -> dict:
        f32 = np.float32
        return {"z": np.ascontiguousarray(z, f32), "v": np.ascontiguousarray(v, f32),
                "y": np.ascontiguousarray(y, f32), "w": np.ascontiguousarray(w, f32),
                "lr": np.array(lr, f32), "momentum": np.array(momentum, f32), "lam": np.array(lam, f32)}

    def step(self, z, v, y, w, lr, momentum, lam):
        """One call of the step graph: `unroll` steps; loss is at the input z."""
        z2, v2, loss = self.step_sess.run(["z_out", "v_out", "loss"], self._feed(z, v, y, w, lr, momentum, lam))
        return z2, v2, loss

    def loss(self, z, y, w, lam: float) -> np.ndarray:
        return self.step(z, np.zeros_like(z), y, w, 0.0, 0.0, lam)[2]

    def search(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        if self.on_cuda and callback is None:
            hp = hp.resolved(self.info.meta.get("defaults"))
            if hp.optimizer == "momentum" and hp.iters % self.unroll == 0:
                return self._search_cuda(z0, y, w, hp)
        return super().search(z0, y, w, hp, callback)  # host loop; it also explains what is refused

    def _search_cuda(self, z0, y, w, hp: SearchParams) -> SearchResult:
        """Device-resident loop: z/v ping-pong between two OrtValue pairs; losses stay on the GPU
        until the end (one host copy per call of the losses only, which is [B] floats)."""
        ort = self.ort
        t0 = time.perf_counter()
        dev, did = "cuda", self.device_id
        sess = self.step_graph_sess or self.step_sess
        ov = ort.OrtValue.ortvalue_from_numpy
        f32 = np.float32
        zero = np.zeros_like(z0, dtype=f32)
        bufs = [(ov(np.ascontiguousarray(z0, f32), dev, did), ov(zero, dev, did)),
                (ov(zero, dev, did), ov(zero, dev, did))]
        consts = {"y": ov(np.ascontiguousarray(y, f32), dev, did), "w": ov(np.ascontiguousarray(w, f32), dev, did),
                  "lr": ov(np.array(hp.step_lr, f32), dev, did), "momentum": ov(np.array(hp.momentum, f32), dev, did),
                  "lam": ov(np.array(hp.lam, f32), dev, did)}
        losses = [ov(np.zeros(len(z0), f32), dev, did) for _ in range(2)]
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
        history = []
        calls = hp.iters // self.unroll
        for call in range(calls):
            b, ro = bindings[call % 2]
            sess.run_with_iobinding(b, ro)
            if call % 50 == 49 or call == calls - 1:  # sparse history: a host copy is a sync point
                history.append(float(losses[call % 2].numpy().mean()))
        z = bufs[calls % 2][0].numpy()
        final = self.loss(z, y, w, hp.lam)
        return SearchResult(z=z, loss=final, history=history, seconds=time.perf_counter() - t0)
