"""One contract for every backend, in the spirit of Polygraphy's runners.

    with open_backend("model_dir", "onnxruntime") as b:     # activate() ... deactivate()
        x = b.generate(z)                                    # G(z), [B, C, H, W] in [-1, 1]
        z, v, loss = b.step(z, v, y, w, lr, momentum, lam)   # one projected-momentum step
        result = b.search(z0, y, w, params)                  # the whole latent search

Arrays in and out are numpy float32. A backend implements `activate_impl`, `generate_impl` and `step`, and
may override one more hook, `search_impl` (default: the host loop, `host_search`), to keep z/v on the
device, with `DeviceLoop` reproducing the host loop's early stopping and history from the [B] losses of
each call. The public `generate` and `search` wrap those hooks: settings are completed and checked once,
and a static-batch model (`gcomp export --batch N`) is fed parts of exactly N rows (`in_fixed_parts`), so
no backend and no caller handles that itself. Each backend declares the options it takes (`options`).
"""
from __future__ import annotations

import contextlib
import threading
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
    #: the keyword options its constructor takes besides the model and the device (checked by open_backend)
    options: tuple[str, ...] = ()
    #: the optimizers its search runs
    optimizers: tuple[str, ...] = ("momentum",)
    #: a batch size the model was built for (static engines); None = any
    fixed_batch: int | None = None
    #: search steps per call of step() (an exported graph may unroll K steps)
    unroll: int = 1
    #: an OpenVINO CPU compile config for the model's encoder.onnx when this backend is OpenVINO (the encoder runs
    #: on the search's runtime, engine/encoder.py); None: ONNX Runtime runs it
    encoder_openvino: dict | None = None
    #: its runtime's objects must not run two calls at once (OpenVINO's infer requests, TensorRT's execution
    #: contexts: "Infer Request is busy" from a second thread): generate and search then take turns on one lock, so
    #: one open model serves several threads; ONNX Runtime's sessions and torch's modules need none
    serial: bool = False

    def __init__(self):
        self.info: ModelInfo | None = None
        self.is_active = False
        #: choices the backend made for the user at activation (precision under auto, ...), one line each
        self.notes: list[str] = []
        #: file_sha256's memo from open_backend's validation check (files it hashed), for backends that hash them too
        self.file_digests: dict = {}
        # reentrant: a search's progress callback may call generate (--save-progress)
        self._turns = threading.RLock() if self.serial else contextlib.nullcontext()

    def settings(self) -> dict:
        """What the backend runs with, for the job summary (name, device, precision, threads, ...)."""
        return {"name": self.name, "device": getattr(self, "device_name", "cpu")}

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
        """G(z) for any number of rows, [B, C, H, W] in [-1, 1]."""
        with self._turns:
            if not self.fixed_batch or len(z) == self.fixed_batch:
                return self.generate_impl(z)
            return np.concatenate([self.generate_impl(a)[:real]
                                   for real, (a,) in in_fixed_parts(self.fixed_batch, [z])])

    def search(self, z0: np.ndarray, y: np.ndarray, w: np.ndarray, hp: SearchParams,
               callback: ProgressFn | None = None) -> SearchResult:
        """The latent search from z0 (any number of rows) with resolved settings (no None: a job's are resolved
        once by gcomp.open_model's Model.options; SearchParams(...).resolved() fills the seed's): a backend applies
        no default of its own."""
        hp = self.check(hp)
        with self._turns:
            if not self.fixed_batch or len(z0) == self.fixed_batch:
                return self.search_impl(z0, y, w, hp, callback)
            return search_in_parts(self.fixed_batch, self.search_impl, z0, y, w, hp, callback)

    def check(self, hp: SearchParams) -> SearchParams:
        """Refuse what this backend cannot run, and settings left unresolved."""
        if hp.optimizer not in self.optimizers:
            raise BackendError(f"the {self.name} backend runs the seed's momentum optimizer only "
                               f"(got {hp.optimizer}); use --backend torch for adam")
        if not hp.is_resolved:
            raise ValueError(f"the search's settings are not resolved ({hp}): a backend applies no defaults; "
                             "pass SearchParams(...).resolved(), or complete through gcomp.open_model")
        if hp.iters % self.unroll:
            raise BackendError(f"--iters {hp.iters} is not a multiple of the graph's unroll {self.unroll}")
        return hp

    # -- what a backend implements -------------------------------------------------------------
    def generate_impl(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, z, v, y, w, lr: float, momentum: float, lam: float):
        """One call (`unroll` steps) at the model's batch size: returns (z_out, v_out, loss at the input z)."""
        raise NotImplementedError

    def search_impl(self, z0, y, w, hp: SearchParams, callback: ProgressFn | None = None) -> SearchResult:
        """The one override point of the search (hp complete and checked, rows = the model's batch)."""
        return self.host_search(z0, y, w, hp, callback)

    def host_search(self, z0: np.ndarray, y: np.ndarray, w: np.ndarray, hp: SearchParams,
                    callback: ProgressFn | None = None) -> SearchResult:
        """The host loop: every call's z/v pass through numpy. It defines the results (z, loss, history,
        early stopping) that device-resident loops (DeviceLoop below) must reproduce."""
        hp = self.check(hp)
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


class DeviceLoop:
    """Early-stop bookkeeping for a search whose z/v stay on a device (one call = `unroll` steps), so
    that it returns what Backend.search's host loop returns.

    The device never freezes an image: its row keeps stepping there, which is harmless because images
    are independent (BatchNorm on running statistics). Instead the host reads each call's [B] losses
    (the loss at the call's input z) and, on the call where images stop, copies that input z once and
    keeps those rows and losses. The host loop freezes a stopped image at exactly that z (and then keeps
    reporting the same loss for it), so the final latents, the history and the call the search ends on
    are the same.
    """

    def __init__(self, n: int, patience: int | None, unroll: int = 1):
        self.stop = EarlyStop(n, patience)
        self.unroll = unroll
        self.history: list[float] = []
        self.frozen_z: np.ndarray | None = None
        self.frozen_loss = np.zeros(n, np.float32)

    def record(self, loss: np.ndarray, z_in: Callable[[], np.ndarray] | None = None) -> bool:
        """After one call: `loss` [B] is at the call's input z; `z_in()` reads that z (called only when
        images stop on this call). Returns True when every image has stopped."""
        was = self.stop.active.copy()
        loss = np.asarray(loss, np.float32)
        self.history += [float(np.mean(np.where(was, loss, self.frozen_loss)))] * self.unroll
        stopped = was & ~self.stop.update(loss, self.unroll)
        if stopped.any():
            z = z_in()
            if self.frozen_z is None:
                self.frozen_z = np.zeros(z.shape, np.float32)
            self.frozen_z[stopped] = z[stopped]
            self.frozen_loss[stopped] = loss[stopped]
        return self.stop.done

    def latents(self, z_last: np.ndarray) -> np.ndarray:
        """The search's z (a new array): the device's latest z, stopped images' rows replaced by where they stopped."""
        if self.frozen_z is None:
            return np.array(z_last, np.float32)
        return np.where(self.stop.active[:, None], z_last, self.frozen_z).astype(np.float32)


def in_fixed_parts(fixed: int, arrays: list[np.ndarray]) -> list[tuple[int, list[np.ndarray]]]:
    """Rows cut into parts of exactly `fixed` rows for a static-batch model, the last part padded with
    copies of its first row: [(real rows, arrays)]. Padding rows are computed and dropped."""
    n = len(arrays[0])
    parts = []
    for lo in range(0, n, fixed):
        real = min(fixed, n - lo)
        part = [a[lo:lo + real] for a in arrays]
        if real < fixed:
            part = [np.concatenate([a, np.repeat(a[:1], fixed - real, 0)]) for a in part]
        parts.append((real, part))
    return parts


def search_in_parts(fixed: int, search, z0, y, w, hp: SearchParams, callback: ProgressFn | None = None) -> SearchResult:
    """`search` (a backend's search_impl, which takes exactly `fixed` rows) over any number of rows: parts
    searched one after the other, the last padded; progress is reported for the first part's rows only."""
    results, t0 = [], time.perf_counter()
    for k, (real, (zp, yp, wp)) in enumerate(in_fixed_parts(fixed, [z0, y, w])):
        cb = None if callback is None or k else (lambda i, z, real=real: callback(i, z[:real]))
        results.append((real, search(zp, yp, wp, hp, cb)))
    longest = max(len(r.history) for _, r in results)
    hist = np.zeros(longest)
    for real, r in results:  # an image's mean loss holds its last value after its part stopped early
        h = np.asarray(r.history or [0.0], float)
        hist += real * np.concatenate([h, np.full(longest - len(h), h[-1])])
    return SearchResult(z=np.concatenate([r.z[:real] for real, r in results]),
                        loss=np.concatenate([r.loss[:real] for real, r in results]),
                        history=(hist / len(z0)).tolist(), seconds=time.perf_counter() - t0)


def split_batch(feed: dict[str, np.ndarray], parts: int) -> list[dict[str, np.ndarray]]:
    """`feed` cut into up to `parts` feeds along the batch axis (the 0-d inputs are shared), for
    backends that run several requests at once; images are independent, so the results concatenate."""
    n = len(feed["z"])
    parts = max(1, min(parts, n))
    if parts == 1:
        return [feed]
    bounds = np.linspace(0, n, parts + 1).astype(int)
    batched = {k for k, a in feed.items() if a.ndim and len(a) == n}  # a mask broadcast over the batch is shared
    return [{k: a[lo:hi] if k in batched else a for k, a in feed.items()} for lo, hi in zip(bounds[:-1], bounds[1:])]
