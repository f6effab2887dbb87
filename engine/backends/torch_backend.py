"""The PyTorch backend: the reference loop on a checkpoint (CPU or CUDA)."""
from __future__ import annotations

import time

import numpy as np

from ..search import SearchParams
from .base import Backend, BackendError, ModelInfo, SearchResult


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, checkpoint, device: str = "cpu"):
        super().__init__()
        self.checkpoint = checkpoint
        self.device_name = device

    def activate_impl(self) -> None:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: pip install 'gcomp[train]' "
                               "(on CPU-only machines: pip install torch==2.13.0 first)") from None
        import torch

        from ...train.checkpoint import load_models

        if self.device_name.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {self.device_name}: PyTorch sees no CUDA GPU here")
        self.torch = torch
        self.device = torch.device(self.device_name)
        cfg, self.G, self.D = load_models(self.checkpoint, self.device)
        for p in list(self.G.parameters()) + list(self.D.parameters()):
            p.requires_grad_(False)
        self.info = ModelInfo(size=cfg.size, zdim=cfg.zdim, channels=cfg.channels,
                              config_hash=cfg.hash(), source=str(self.checkpoint))

    def deactivate_impl(self) -> None:
        self.G = self.D = None

    def _t(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)

    def generate(self, z: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.G(self._t(z)).cpu().numpy()

    def step(self, z, v, y, w, lr, momentum, lam):
        from ..reference import loss_and_grad, momentum_step

        zt, vt = self._t(z), self._t(v)
        loss, grad = loss_and_grad(self.G, self.D, zt, self._t(y), self._t(w), lam)
        zt, vt = momentum_step(zt, vt, grad, lr, momentum)
        return zt.cpu().numpy(), vt.cpu().numpy(), loss.cpu().numpy()

    def search(self, z0, y, w, hp: SearchParams, callback=None) -> SearchResult:
        from ..reference import search

        t0 = time.perf_counter()
        cb = None if callback is None else (lambda i, z, loss: callback(i, z.cpu().numpy()))
        z, loss, history = search(self.G, self.D, self._t(z0), self._t(y), self._t(w), hp, cb)
        return SearchResult(z=z.cpu().numpy(), loss=loss.cpu().numpy(), history=history,
                            seconds=time.perf_counter() - t0)
