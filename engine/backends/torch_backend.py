"""The PyTorch backend: a checkpoint on CPU or CUDA, through one of two loops.

* the reference (train/reference.py): autograd, momentum or Adam; the oracle every other path is tested
  against, and the default on CPU in fp32.
* the fast path: train/adjoint.py's StepModule, the module `gcomp export` traces into step.onnx (BatchNorm
  folded, gradient written by hand, no autograd, so one step is capturable as a CUDA graph) with z/v kept
  on the device. It runs the seed's momentum only.
  On CUDA one step is captured once per batch shape and settings (static buffers) and replayed.

Precisions: fp32 (true fp32, TF32 off), tf32 (CUDA: cuBLAS/cuDNN TensorFloat-32 for matmuls and convs),
bf16 (the network in bfloat16 on the fast path; |w * (G(z) - y)|, the loss, the logit's softplus/sigmoid
and the z/v update stay fp32). generate() always runs G in fp32 (tf32 on CUDA when asked).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from ..search import SearchParams
from .base import Backend, BackendError, DeviceLoop, ModelInfo, SearchResult

PRECISIONS = ("fp32", "tf32", "bf16")
#: the fast path's kernel choices: "portable" = the ops step.onnx holds; nhwc, pad8, masks: layouts of the
#: same math (train/adjoint.py FastKernels); compile: torch.compile (inductor fuses the elementwise work;
#: compiles once per batch shape, ~45 s for the tiny test model on 2 CPU cores, Triton on CUDA)
KERNELS = ("nhwc", "pad8", "masks", "compile")
KERNEL_SETS = {"portable": (), "tuned": ("nhwc", "pad8", "masks")}


def parse_kernels(spec: str | None) -> tuple[str, ...]:
    """'portable', 'tuned' or a comma list of KERNELS -> the chosen names, in KERNELS' order."""
    if spec is None:
        return KERNEL_SETS["portable"]
    if spec in KERNEL_SETS:
        return KERNEL_SETS[spec]
    names = [k.strip() for k in str(spec).split(",") if k.strip()]
    wrong = [k for k in names if k not in KERNELS]
    if wrong or not names:
        raise BackendError(f"the torch backend's kernels are 'portable', 'tuned' or a comma list of "
                           f"{', '.join(KERNELS)}; got {spec!r}")
    return tuple(k for k in KERNELS if k in names)


class TorchBackend(Backend):
    """The only part of the runtime that imports torch and gcomp.train, and only when activated."""

    name = "torch"
    options = ("precision", "fast", "cuda_graph", "kernels")
    optimizers = ("momentum", "adam")

    def __init__(self, checkpoint, device: str = "cpu", precision: str = "fp32", fast: bool | None = None,
                 cuda_graph: bool = True, kernels: str | None = None):
        """fast: the hand-written-gradient loop instead of the autograd reference; None = on CUDA or for bf16
        (bf16 compute exists only there), so fp32 on CPU stays the oracle. cuda_graph: on CUDA, replay one
        captured step instead of launching each kernel (ignored on CPU). kernels: the fast path's layout
        ('portable', the default: step.onnx's ops; 'tuned' = nhwc,pad8,masks; or a comma list of nhwc, pad8,
        masks, compile), the same values up to the order of float sums (and, in bf16, 1-ulp differences
        of the leaky slope); see train/adjoint.py."""
        super().__init__()
        if precision not in PRECISIONS:
            raise BackendError(f"the torch backend's precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "tf32" and not device.startswith("cuda"):
            raise BackendError("--precision tf32 is a CUDA mode (TensorFloat-32 matmuls and convolutions); "
                               "on CPU use fp32 or bf16")
        if precision == "bf16" and fast is False:
            raise BackendError("bf16 compute runs on the torch backend's fast path only (fast=False asked for the "
                               "autograd reference)")
        self.checkpoint = checkpoint
        self.device_name = device
        self.precision = precision
        self.fast = fast
        self.cuda_graph = cuda_graph
        self.kernels = parse_kernels(kernels)
        if self.kernels and fast is False:
            raise BackendError("kernels choose the torch backend's fast path; fast=False asked for the autograd "
                               "reference")

    def activate_impl(self) -> None:
        try:
            import torch
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: pip install 'gcomp[train]' "
                               "(on CPU-only machines: pip install torch==2.13.0 first)") from None

        from ...train.checkpoint import CheckpointError, load_models, weights_id

        if self.device_name.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {self.device_name}: PyTorch sees no CUDA GPU here")
        self.torch = torch
        self.device = torch.device(self.device_name)
        self.on_cuda = self.device.type == "cuda"
        try:
            cfg, self.G, self.D = load_models(self.checkpoint, self.device)
        except CheckpointError as e:  # the runtime reports model problems as BackendError, whatever the backend
            raise BackendError(str(e)) from None
        for p in list(self.G.parameters()) + list(self.D.parameters()):
            p.requires_grad_(False)
        self.info = ModelInfo(size=cfg.size, zdim=cfg.zdim, channels=cfg.channels,
                              config_hash=cfg.hash(), source=str(self.checkpoint),
                              meta={"weights_id": weights_id(self.G, self.D)})  # pairs an encoder.onnx beside it
        self.use_fast = self.fast if self.fast is not None else (self.on_cuda or self.precision == "bf16"
                                                                  or bool(self.kernels))
        self.stepper = self._graph = None
        if self.use_fast:
            from ...train.adjoint import FastKernels, StepModule

            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            kernels = FastKernels(**{k: True for k in self.kernels if k != "compile"})
            self.stepper = StepModule(self.G, self.D, compute_dtype=dtype, kernels=kernels).to(self.device).eval()
            # the loop's step; static shapes: a new batch shape compiles again (the graph key changes too)
            self.step_fn = torch.compile(self.stepper, dynamic=False) if "compile" in self.kernels else self.stepper

    def deactivate_impl(self) -> None:
        self.G = self.D = self.stepper = self.step_fn = self._graph = None

    def settings(self) -> dict:
        return super().settings() | {"precision": self.precision, "fast": getattr(self, "use_fast", self.fast),
                                     "cuda_graph": self.cuda_graph, "kernels": ",".join(self.kernels) or "portable"}

    @contextmanager
    def _scope(self):
        """This backend's GPU and math settings, set only while it works: the TF32 switches and cuDNN's
        autotuner are process-wide, and the caller's own torch code may rely on their values."""
        if not self.on_cuda:
            yield
            return
        torch = self.torch
        b = torch.backends
        tf32 = self.precision == "tf32"
        try:  # the legacy flags, which every torch has...
            b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32
            switches = [(b.cuda.matmul, "allow_tf32", tf32), (b.cudnn, "allow_tf32", tf32)]
        except RuntimeError:  # ...unless this process set torch >= 2.9's new API: reading the old then raises
            switches = [(b.cuda.matmul, "fp32_precision", "tf32" if tf32 else "ieee"),
                        (b.cudnn.conv, "fp32_precision", "tf32" if tf32 else "ieee")]
        switches.append((b.cudnn, "benchmark", True))  # fixed shapes: pick the fastest conv algorithms once
        saved = [getattr(obj, key) for obj, key, _ in switches]
        try:
            for obj, key, value in switches:
                setattr(obj, key, value)
            with torch.cuda.device(self.device):
                yield
        finally:
            for (obj, key, _), value in zip(switches, saved):
                setattr(obj, key, value)

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)

    def generate_impl(self, z: np.ndarray) -> np.ndarray:
        with self._scope(), self.torch.no_grad():
            return self.G(self._t(z)).cpu().numpy()

    def step(self, z, v, y, w, lr, momentum, lam):
        from ...train.reference import loss_and_grad, momentum_step

        with self._scope():
            if self.use_fast:
                with self.torch.no_grad():
                    out = self.stepper(self._t(z), self._t(v), self._t(y), self._t(w), lr, momentum, lam)
                return tuple(t.cpu().numpy() for t in out)
            zt, vt = self._t(z), self._t(v)
            loss, grad = loss_and_grad(self.G, self.D, zt, self._t(y), self._t(w), lam)
            zt, vt = momentum_step(zt, vt, grad, lr, momentum)
            return zt.cpu().numpy(), vt.cpu().numpy(), loss.cpu().numpy()

    def search_impl(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        if self.use_fast and hp.optimizer == "momentum":
            with self._scope(), self.torch.no_grad():
                return self._search_fast(z0, y, w, hp, callback)
        if self.precision == "bf16":
            raise BackendError(f"--precision bf16 runs the momentum fast path only; {hp.optimizer} runs on the "
                               "fp32 reference loop (leave --precision out)")
        from ...train.reference import search

        t0 = time.perf_counter()
        cb = None if callback is None else (lambda i, z, loss: callback(i, z.cpu().numpy()))
        with self._scope():
            z, loss, history = search(self.G, self.D, self._t(z0), self._t(y), self._t(w), hp, cb)
        return SearchResult(z=z.cpu().numpy(), loss=loss.cpu().numpy(), history=history,
                            seconds=time.perf_counter() - t0)

    # -- the fast path ---------------------------------------------------------------------------
    def _fast_loop(self, z0, y, w, hp: SearchParams):
        """(run, bufs): run() does one step in place on the static device tensors bufs (z, v, y, w; z_in =
        the z this step's loss is at; loss). On CUDA with cuda_graph, run() replays a captured graph."""
        torch = self.torch
        key = (z0.shape, y.shape, w.shape, hp.step_lr, hp.momentum, hp.lam)
        if self._graph is not None and self._graph[0] == key:  # the next batch of a job: reuse the graph
            _, run, bufs = self._graph
            for name, a in (("z", z0), ("y", y), ("w", w)):
                bufs[name].copy_(self._t(a))  # copy_ keeps the buffer's memory format
            bufs["v"].zero_()
            return run, bufs
        z = self._t(z0).clone()  # clone: on CPU _t may share z0's memory, which the loop overwrites
        prep = self.stepper.prepare  # y and w in the kernels' memory format, once per batch
        bufs = {"z": z, "v": torch.zeros_like(z), "y": prep(self._t(y)), "w": prep(self._t(w)), "z_in": torch.zeros_like(z),
                "loss": torch.zeros(len(z), device=self.device)}
        lr, momentum, lam = hp.step_lr, hp.momentum, hp.lam  # baked into a captured graph: part of its key

        def step():
            z2, v2, loss = self.step_fn(bufs["z"], bufs["v"], bufs["y"], bufs["w"], lr, momentum, lam)
            bufs["z_in"].copy_(bufs["z"])  # where an image that stops on this step is frozen
            bufs["z"].copy_(z2)
            bufs["v"].copy_(v2)
            bufs["loss"].copy_(loss)

        if not (self.on_cuda and self.cuda_graph):
            return step, bufs
        self._graph = None  # release the previous graph's memory pool before warming up another
        # torch's recipe (CUDA semantics, "CUDA Graphs"): warm up on a side stream (cuDNN autotuning,
        # allocator), then capture; inputs and outputs are the static tensors in bufs.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                step()
        except RuntimeError as e:  # a kernel that cannot be captured: run eagerly rather than fail the job
            self.notes.append(f"torch: CUDA graph capture failed, running eagerly ({e})")
            self.cuda_graph = False
            bufs["z"].copy_(self._t(z0))
            bufs["v"].zero_()
            return step, bufs
        bufs["z"].copy_(self._t(z0))  # the warm-up moved z and v
        bufs["v"].zero_()
        self._graph = (key, graph.replay, bufs)
        return graph.replay, bufs

    def _search_fast(self, z0, y, w, hp: SearchParams, callback) -> SearchResult:
        torch, t0 = self.torch, time.perf_counter()
        run, bufs = self._fast_loop(z0, y, w, hp)
        loop = DeviceLoop(len(z0), hp.patience)
        host = lambda name: bufs[name].cpu().numpy().copy()  # noqa: E731 (a copy: on CPU .numpy() is a view)
        # With neither early stopping nor progress nothing needs the host during the loop: losses are
        # kept on the device and read once at the end, so the GPU never waits for Python.
        lazy = not hp.patience and callback is None
        pending = []
        for i in range(hp.iters):
            run()
            if lazy:
                pending.append(bufs["loss"].clone())
                continue
            done = loop.record(host("loss"), lambda: host("z_in"))
            if callback is not None:
                callback(i, loop.latents(host("z")))
            if done:
                break
        if pending:
            for loss in torch.stack(pending).cpu().numpy():
                loop.record(loss)
        z = loop.latents(host("z"))
        _, _, final = self.stepper(self._t(z), torch.zeros_like(bufs["z"]), bufs["y"], bufs["w"], 0.0, 0.0, hp.lam)
        return SearchResult(z=z, loss=final.cpu().numpy(), history=loop.history, seconds=time.perf_counter() - t0)
