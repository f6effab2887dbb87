"""The TensorRT backend: runs `gcomp export --trt`'s generator.engine and step.engine, with no PyTorch.

Device memory, copies and streams come from NVIDIA's cuda-python (`cuda.bindings.runtime`);
pycuda has no wheels (it compiles against a local CUDA toolkit), so it is not used. Before
deserializing, the engine's gcomp header is checked against this runtime (TensorRT or
TensorRT-RTX, its exact version) and this GPU's compute capability, so a mismatched engine is
refused with a message instead of crashing. The search keeps z and v in two ping-pong buffer
pairs on the GPU, runs `execute_async_v3` on one stream, and captures each direction (A->B,
B->A) once as a CUDA graph that is then replayed; per call only the [B] losses come back to the
host (early stopping and history as the host loop has them: base.DeviceLoop), then the final z.

Status: written against the TensorRT 10 / TensorRT-RTX 1.x Python API; it has not run on a GPU
yet (see the README's "What was verified where").
"""
from __future__ import annotations

import time

import numpy as np

from ..search import SearchParams
from .base import Backend, BackendError, DeviceLoop, SearchResult
from .exported import GENERATOR_INPUT, GENERATOR_OUTPUT, STEP_INPUTS, STEP_OUTPUTS, export_info, model_files
from .tensorrt_plan import EngineMismatchError, TensorRTUnavailable, check_engine_header, import_tensorrt, read_engine


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendError("the tensorrt backend needs NVIDIA's cuda-python for device memory: "
                               "pip install cuda-python (pycuda is not used: it has no wheels)") from None
    return cudart


def _ok(result):
    """cuda-python returns (err, *values): raise on an error, return the values."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error {err}")
    return vals[0] if len(vals) == 1 else (vals or None)


class DeviceArray:
    """A float32 buffer on the GPU with host copies on a stream."""

    def __init__(self, cudart, shape: tuple[int, ...]):
        self.cudart, self.shape = cudart, tuple(shape)
        self.nbytes = int(np.prod(shape)) * 4
        self.ptr = _ok(cudart.cudaMalloc(max(self.nbytes, 4)))

    def upload(self, a: np.ndarray, stream) -> None:
        a = np.ascontiguousarray(a, np.float32)
        _ok(self.cudart.cudaMemcpyAsync(self.ptr, a.ctypes.data, self.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
        _ok(self.cudart.cudaStreamSynchronize(stream))  # `a` may be a temporary

    def download(self, stream) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        _ok(self.cudart.cudaMemcpyAsync(out.ctypes.data, self.ptr, self.nbytes,
                                        self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        _ok(self.cudart.cudaStreamSynchronize(stream))
        return out

    def free(self) -> None:
        if self.ptr is not None:
            self.cudart.cudaFree(self.ptr)
            self.ptr = None


class TensorRTBackend(Backend):
    name = "tensorrt"
    serial = True  # infer requests / execution contexts: one call at a time (base.Backend.serial)
    options = ("cuda_graph",)

    def __init__(self, model, device: str = "cuda", cuda_graph: bool = True):
        super().__init__()
        self.model = model
        self.device_name = device
        self.cuda_graph = cuda_graph
        self.buffers: list[DeviceArray] = []

    def activate_impl(self) -> None:
        if not self.device_name.startswith("cuda"):
            raise BackendError("the tensorrt backend runs on a CUDA GPU: pass --device cuda[:N]")
        try:
            trt, builder = import_tensorrt("the tensorrt backend")
        except TensorRTUnavailable as e:
            raise BackendError(str(e)) from None
        cudart = self.cudart = _cudart()
        dev = int(self.device_name.split(":")[1]) if ":" in self.device_name else 0
        _ok(cudart.cudaSetDevice(dev))
        props = _ok(cudart.cudaGetDeviceProperties(dev))
        cc = f"{props.major}.{props.minor}"
        gen_path, step_path = model_files(self.model, ".engine")
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {}
        for kind, path in (("generator", gen_path), ("step", step_path)):
            header, plan = read_engine(path)
            try:
                check_engine_header(header, builder, getattr(trt, "__version__", None), cc)
            except EngineMismatchError as e:
                raise BackendError(f"{path}: {e}") from None
            engine = self.runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise BackendError(f"{path}: TensorRT could not deserialize the engine (see its log above)")
            self.engines[kind] = (engine, engine.create_execution_context(), header)
        # the ONNX metadata each header carries, checked as every exported model is
        self.info, self.unroll, self.fixed_batch = export_info(
            gen_path, self.engines["generator"][2].get("metadata", {}), step_path, self.engines["step"][2].get("metadata", {}))
        self.stream = _ok(cudart.cudaStreamCreate())

    def deactivate_impl(self) -> None:
        for b in self.buffers:
            b.free()
        self.buffers = []
        self.engines = {}
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def _release(self, mark: int) -> None:
        """Free the buffers allocated since `mark` (each call's scratch)."""
        for buf in self.buffers[mark:]:
            buf.free()
        del self.buffers[mark:]

    def _alloc(self, shape) -> DeviceArray:
        b = DeviceArray(self.cudart, shape)
        self.buffers.append(b)
        return b

    def _run(self, kind: str, inputs: dict[str, DeviceArray], outputs: dict[str, DeviceArray]) -> None:
        _, ctx, _ = self.engines[kind]
        for name, buf in inputs.items():
            if not ctx.set_input_shape(name, tuple(buf.shape)):  # outside the engine's optimization profile
                raise BackendError(f"the {kind} engine does not take {name} of shape {tuple(buf.shape)}; "
                                   "re-export with `gcomp export --trt` for this batch size")
            ctx.set_tensor_address(name, buf.ptr)
        for name, buf in outputs.items():
            ctx.set_tensor_address(name, buf.ptr)
        if not ctx.execute_async_v3(self.stream):
            raise BackendError(f"TensorRT failed to run the {kind} engine")

    def generate_impl(self, z: np.ndarray) -> np.ndarray:
        s, c = self.info.size, self.info.channels
        mark = len(self.buffers)
        try:
            zi, img = self._alloc(z.shape), self._alloc((len(z), c, s, s))
            zi.upload(z, self.stream)
            self._run("generator", {GENERATOR_INPUT: zi}, {GENERATOR_OUTPUT: img})
            return img.download(self.stream)
        finally:
            self._release(mark)

    def _step_buffers(self, z, v, y, w, lr, momentum, lam):
        ins = {"z": self._alloc(z.shape), "v": self._alloc(v.shape), "y": self._alloc(y.shape), "w": self._alloc(w.shape),
               "lr": self._alloc(()), "momentum": self._alloc(()), "lam": self._alloc(())}
        for name, val in zip(STEP_INPUTS, (z, v, y, w, np.float32(lr), np.float32(momentum), np.float32(lam))):
            ins[name].upload(np.asarray(val, np.float32), self.stream)
        return ins

    def step(self, z, v, y, w, lr, momentum, lam):
        mark = len(self.buffers)
        try:
            ins = self._step_buffers(z, v, y, w, lr, momentum, lam)
            outs = {"z_out": self._alloc(z.shape), "v_out": self._alloc(v.shape), "loss": self._alloc((len(z),))}
            self._run("step", ins, outs)
            return tuple(outs[n].download(self.stream) for n in STEP_OUTPUTS)
        finally:
            self._release(mark)

    def search_impl(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        mark = len(self.buffers)
        try:
            return self._search_device(z0, y, w, hp, callback)
        finally:
            self._release(mark)

    def _search_device(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        cudart, t0 = self.cudart, time.perf_counter()
        a = self._step_buffers(z0, np.zeros_like(z0), y, w, hp.step_lr, hp.momentum, hp.lam)
        b = {"z": self._alloc(z0.shape), "v": self._alloc(z0.shape)}
        loss = self._alloc((len(z0),))
        shared = {k: a[k] for k in ("y", "w", "lr", "momentum", "lam")}
        direction = [({**shared, "z": a["z"], "v": a["v"]}, {"z_out": b["z"], "v_out": b["v"], "loss": loss}),
                     ({**shared, "z": b["z"], "v": b["v"]}, {"z_out": a["z"], "v_out": a["v"], "loss": loss})]
        graphs = [None, None]  # the captured directions, destroyed however the loop ends
        try:
            return self._loop(z0, y, w, hp, callback, a, b, loss, direction, graphs, t0)
        finally:
            for g in graphs:
                if g is not None:
                    cudart.cudaGraphExecDestroy(g)

    def _loop(self, z0, y, w, hp, callback, a, b, loss, direction, graphs, t0) -> SearchResult:
        cudart, calls = self.cudart, hp.iters // self.unroll
        if self.cuda_graph:
            # Capture each direction once; a replay is one launch instead of one per layer.
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            for d in (0, 1):
                self._run("step", *direction[d])  # run once outside capture: TensorRT sets itself up
                _ok(cudart.cudaStreamBeginCapture(self.stream, mode))
                self._run("step", *direction[d])
                graph = _ok(cudart.cudaStreamEndCapture(self.stream))
                graphs[d] = _ok(cudart.cudaGraphInstantiate(graph, 0))
                cudart.cudaGraphDestroy(graph)
            # the warm-up runs above moved z: start again from z0
            a["z"].upload(z0, self.stream)
            a["v"].upload(np.zeros_like(z0), self.stream)
        loop = DeviceLoop(len(z0), hp.patience, self.unroll)
        cur = a  # the pair holding the latest z
        for call in range(calls):
            d = call % 2
            if graphs[d] is not None:
                _ok(cudart.cudaGraphLaunch(graphs[d], self.stream))
            else:
                self._run("step", *direction[d])
            src, cur = cur, (b if d == 0 else a)
            # a download synchronizes the stream: the losses are this call's
            done = loop.record(loss.download(self.stream), lambda: src["z"].download(self.stream))
            if callback is not None:
                callback((call + 1) * self.unroll - 1, loop.latents(cur["z"].download(self.stream)))
            if done:
                break
        final_z = loop.latents(cur["z"].download(self.stream))
        final = self.loss(final_z, y, w, hp.lam)
        return SearchResult(z=final_z, loss=final, history=loop.history, seconds=time.perf_counter() - t0)
