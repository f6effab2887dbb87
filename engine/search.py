"""The latent search's settings and the seed's update rule, shared by every backend (numpy only)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import numpy as np

OPTIMIZERS = ("momentum", "adam")
SEED_ITERS = 1000


@dataclass(frozen=True)
class SearchParams:
    """Defaults are the seed's (bamos/dcgan-completion.tensorflow): the faithful baseline.

    iters=None and lr=None mean "the model's recommended value": an exported model may carry
    tuned `defaults` in its metadata (see `resolved`); otherwise the seed's 1000 iterations, and
    lr 0.01 for the seed's momentum or 0.03 for Adam.
    """

    iters: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    lam: float = 0.1
    optimizer: str = "momentum"
    weighted: bool = False  # the paper's 7x7-weighted context loss instead of the plain mask
    patience: int | None = None  # stop an image after this many steps without improving (None: the model's; 0: never)
    beta1: float = 0.9  # Adam only
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"iters must be >= 0, got {self.iters}")

    @property
    def step_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 if self.optimizer == "momentum" else 0.03

    def resolved(self, model_defaults: dict | str | None = None) -> "SearchParams":
        """Fill iters / lr left as None from the model's defaults, else from the seed's."""
        d = json.loads(model_defaults) if isinstance(model_defaults, str) else (model_defaults or {})
        iters = self.iters if self.iters is not None else int(d.get("iters", SEED_ITERS))
        lr = self.lr
        if lr is None and "lr" in d and d.get("optimizer", "momentum") == self.optimizer:
            lr = float(d["lr"])
        patience = self.patience if self.patience is not None else int(d.get("patience", 0))
        return replace(self, iters=iters, lr=lr if lr is not None else self.step_lr, patience=patience)

    def as_dict(self) -> dict:
        return asdict(self) | {"lr": self.step_lr}


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
