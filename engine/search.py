"""The latent search's settings and the seed's update rule, shared by every backend (numpy only).

The seed's numbers (lr, momentum, lam, iterations) are written here and nowhere else."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

OPTIMIZERS = ("momentum", "adam")
#: The seed's search settings (bamos/dcgan-completion.tensorflow): the only place these numbers are written.
#: Every other default (the CLI, export metadata, validation inputs, the bench) derives from them.
SEED = {"iters": 1000, "lr": 0.01, "momentum": 0.9, "lam": 0.1, "patience": 0}
ADAM_LR = 0.03  # Adam's step size when none is given (the seed has no Adam)
#: the keys a model's metadata `defaults` may recommend
RECOMMENDABLE = ("iters", "lr", "momentum", "lam", "optimizer", "patience")
#: What `gcomp export` recommends in a fresh export's metadata `defaults` (changeable with --recommend): a search
#: measured on the bundled model (README, Default model): the seed's momentum and lam, lr 3e-4, at most 100
#: iterations, a per-image early stop after 20 steps without improvement. Not the seed's lr 0.01 x 1000
#: iterations: with the contextual loss summed over pixels that lr pins most of z to the clip bounds. A fresh
#: export has no encoder yet, so it recommends a search even where a model with a good encoder recommends less.
EXPORT_RECOMMENDED = {"iters": 100, "lr": 3e-4, "momentum": SEED["momentum"], "lam": SEED["lam"],
                      "optimizer": "momentum", "patience": 20}


@dataclass(frozen=True)
class SearchParams:
    """The latent search's settings. None means "not given": `resolved()` fills it from a model's
    recommended settings (its metadata `defaults`), else from the seed's (SEED: 1000 iterations,
    lr 0.01 for the momentum optimizer or ADAM_LR for Adam, momentum 0.9, lam 0.1, no early stop).
    `gcomp.open_model` applies the model's recommendation once, when the model is opened.
    """

    iters: int | None = None
    lr: float | None = None
    momentum: float | None = None
    lam: float | None = None  # weight of the perceptual (discriminator) loss
    optimizer: str = "momentum"
    weighted: bool = False  # the paper's 7x7-weighted context loss instead of the plain mask
    patience: int | None = None  # stop an image after this many steps without improving (0: never)
    beta1: float = 0.9  # Adam only
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"iters (--iters) must be >= 0, got {self.iters}")
        # Checked here so a bad value fails before any work, not as NaN fills (math.isfinite also refuses nan).
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr (--lr) must be a positive number, got {self.lr}")
        if self.momentum is not None and not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum (--momentum) must be in [0, 1), got {self.momentum}")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam (--lam) must be >= 0, got {self.lam}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience (--early-stop) must be >= 0 (0: never), got {self.patience}")

    @classmethod
    def seed(cls) -> "SearchParams":
        """The seed's settings, all given."""
        return cls().resolved()

    @property
    def step_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return SEED["lr"] if self.optimizer == "momentum" else ADAM_LR

    @property
    def is_resolved(self) -> bool:
        return None not in (self.iters, self.lr, self.momentum, self.lam, self.patience)

    def resolved(self, model_defaults: dict | str | None = None) -> "SearchParams":
        """Every setting left as None filled from the model's recommended `defaults`, else from the seed's.
        A recommended lr (and momentum) applies only to the optimizer it was tuned for."""
        d = json.loads(model_defaults) if isinstance(model_defaults, str) else dict(model_defaults or {})
        same_optimizer = d.get("optimizer", "momentum") == self.optimizer

        def pick(name, cast, applies=True):
            value = getattr(self, name)
            if value is not None:
                return value
            return cast(d[name]) if applies and name in d else None

        lr = pick("lr", float, same_optimizer)
        return replace(self, iters=_or(pick("iters", int), SEED["iters"]), lr=lr if lr is not None else self.step_lr,
                       momentum=_or(pick("momentum", float, same_optimizer), SEED["momentum"]),
                       lam=_or(pick("lam", float), SEED["lam"]), patience=_or(pick("patience", int), SEED["patience"]))

    def as_dict(self) -> dict:
        return asdict(self) | {"lr": self.step_lr}

    def recommended(self) -> dict:
        """These settings as a model's metadata `defaults` (what `gcomp export` writes: the seed's)."""
        r = self.resolved()
        return {k: getattr(r, k) for k in ("iters", "lr", "momentum", "lam")}


def _or(value, default):
    return default if value is None else value


def momentum_update(z: np.ndarray, v: np.ndarray, grad: np.ndarray, lr: float, momentum: float):
    """The seed's projected Nesterov step, verbatim:
    v_prev = v; v = mom*v - lr*g; z += -mom*v_prev + (1+mom)*v; z = clip(z, -1, 1)."""
    v_new = momentum * v - lr * grad
    z_new = z - momentum * v + (1 + momentum) * v_new
    return np.clip(z_new, -1, 1), v_new


class EarlyStop:
    """Per-image early stopping: an image whose loss has not improved by more than `rtol` for
    `patience` steps is frozen (its z kept, its velocity zeroed); the search ends when all are."""

    rtol = 1e-4

    def __init__(self, n: int, patience: int | None):
        self.patience = patience or 0
        self.best = np.full(n, np.inf)
        self.since = np.zeros(n, int)
        self.active = np.ones(n, bool)

    def update(self, loss: np.ndarray, steps: int = 1) -> np.ndarray:
        """Record the losses of one call (`steps` steps); returns the images still searching."""
        if not self.patience:
            return self.active
        loss = np.asarray(loss, np.float64)
        improved = loss < self.best * (1 - self.rtol)
        self.best = np.where(improved, loss, self.best)
        self.since = np.where(improved, 0, self.since + steps)
        self.active &= self.since < self.patience
        return self.active

    @property
    def done(self) -> bool:
        return bool(self.patience) and not self.active.any()
