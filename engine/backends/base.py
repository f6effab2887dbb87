"""One contract for every backend, in the spirit of Polygraphy's runners.

    with open_backend("model_dir", "onnxruntime") as b:     # activate() ... deactivate()
        x = b.generate(z)                                    # G(z), [B, C, H, W] in [-1, 1]
        z, v, loss = b.step(z, v, y, w, lr, momentum, lam)   # one projected-momentum step
        result = b.search(z0, y, w, params)                  # the whole latent search

Arrays in and out are numpy float32. `search` has a generic implementation on top of `step`;
backends override it to keep the loop on the device (no host copy per iteration).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..search import EarlyStop, SearchParams


class BackendError(RuntimeError):
    """A backend that cannot run here or with this model (missing package, wrong GPU, bad file)."""


@dataclass
class ModelInfo:
    size: int
    zdim: int
    channels: int = 3
    config_hash: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class SearchResult:
    z: np.ndarray  # [B, zdim], after the last step
    loss: np.ndarray  # [B], the loss at z
    history: list[float] = field(default_factory=list)  # mean loss at each iteration
    seconds: float = 0.0


ProgressFn = Callable[[int, np.ndarray], None]  # (iteration, z) after each step


class Backend:
    name = "base"
    #: a batch size the model was built for (static engines); None = any
    fixed_batch: int | None = None
    #: search steps per call of step() (an exported graph may unroll K steps)
    unroll: int = 1

    def __init__(self):
        self.info: ModelInfo | None = None
        self.is_active = False

    # -- lifecycle --------------------------------------------------------------------------
    def activate(self) -> "Backend":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate_impl(self) -> None:
        pass

    def deactivate_impl(self) -> None:
        pass

    # -- inference ---------------------------------------------------------------------------
    def generate(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, z, v, y, w, lr: float, momentum: float, lam: float):
        """One step: returns (z_out, v_out, loss at the input z)."""
        raise NotImplementedError

    def search(self, z0: np.ndarray, y: np.ndarray, w: np.ndarray, hp: SearchParams,
               callback: ProgressFn | None = None) -> SearchResult:
        hp = hp.resolved(self.info.meta.get("defaults") if self.info else None)
        if hp.optimizer != "momentum":
            raise BackendError(f"the {self.name} backend runs the seed's momentum optimizer only "
                               f"(got {hp.optimizer}); use --backend torch for adam")
        if hp.iters % self.unroll:
            raise BackendError(f"--iters {hp.iters} is not a multiple of the graph's unroll {self.unroll}")
        t0 = time.perf_counter()
        z = np.ascontiguousarray(z0, np.float32)
        v = np.zeros_like(z)
        history = []
        stop = EarlyStop(len(z), hp.patience)
        for call in range(hp.iters // self.unroll):
            z_new, v_new, loss = self.step(z, v, y, w, hp.step_lr, hp.momentum, hp.lam)
            history += [float(np.mean(loss))] * self.unroll
            active = stop.update(loss, self.unroll)[:, None]
            z, v = np.where(active, z_new, z), np.where(active, v_new, 0)
            if callback is not None:
                callback((call + 1) * self.unroll - 1, z)
            if stop.done:
                break
        final = self.loss(z, y, w, hp.lam)
        return SearchResult(z=z, loss=final, history=history, seconds=time.perf_counter() - t0)

    def loss(self, z, y, w, lam: float) -> np.ndarray:
        """Loss at z: a step with lr = 0 and momentum = 0 leaves z in place and reports it."""
        _, _, loss = self.step(z, np.zeros_like(z), y, w, 0.0, 0.0, lam)
        return loss
