"""The reference completion loop in PyTorch: the oracle every faster path is tested against.

It follows the seed line for line: L(z) = ||w * (G(z) - y)||_1 + lam * softplus(-D(G(z))) per image,
its gradient by autograd, then the seed's projected Nesterov momentum (or Adam, clipped the same way).
G and D must be in eval mode (BatchNorm on running statistics) so images never affect each other.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..engine.search import EarlyStop, SearchParams


def completion_loss(G, D, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lam: float):
    """Per-image loss [B] and G(z). w broadcasts over channels when it has one."""
    x = G(z)
    contextual = (w * (x - y)).abs().flatten(1).sum(1)
    perceptual = F.softplus(-D(x))  # the generator's GAN loss: -log sigmoid(D(G(z)))
    return contextual + lam * perceptual, x


def loss_and_grad(G, D, z, y, w, lam):
    z = z.detach().requires_grad_(True)
    loss, _ = completion_loss(G, D, z, y, w, lam)
    (grad,) = torch.autograd.grad(loss.sum(), z)  # images are independent: d(sum)/dz_i = dL_i/dz_i
    return loss.detach(), grad


def momentum_step(z, v, grad, lr: float, momentum: float):
    """The seed's update (see gcomp.engine.search.momentum_update for the numpy twin)."""
    v_new = momentum * v - lr * grad
    z_new = (z - momentum * v + (1 + momentum) * v_new).clamp(-1, 1)
    return z_new, v_new


def search(G, D, z0: torch.Tensor, y: torch.Tensor, w: torch.Tensor, hp: SearchParams,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None):
    """Run hp.iters steps from z0. Returns (z, final loss at z [B], mean loss per iteration [iters]).

    callback(i, z, loss) is called after each iteration i (0-based) with the new z and the loss at the old one.
    """
    hp = hp.resolved()
    z = z0.clone()
    v = torch.zeros_like(z)  # momentum buffer, or Adam's first moment
    s = torch.zeros_like(z)  # Adam's second moment
    lr = hp.step_lr
    history = []
    stop = EarlyStop(len(z), hp.patience)
    with torch.no_grad():
        for i in range(hp.iters):
            z_prev, s_prev = z, s
            with torch.enable_grad():
                loss, grad = loss_and_grad(G, D, z, y, w, hp.lam)
            if hp.optimizer == "momentum":
                z, v = momentum_step(z, v, grad, lr, hp.momentum)
            else:
                t = i + 1
                v = hp.beta1 * v + (1 - hp.beta1) * grad
                s = hp.beta2 * s + (1 - hp.beta2) * grad * grad
                step = (v / (1 - hp.beta1**t)) / ((s / (1 - hp.beta2**t)).sqrt() + hp.eps)
                z = (z - lr * step).clamp(-1, 1)
            history.append(loss.mean().item())
            if stop.patience:
                active = torch.from_numpy(stop.update(loss.cpu().numpy())).to(z.device)[:, None]
                z = torch.where(active, z, z_prev)
                v, s = torch.where(active, v, torch.zeros_like(v)), torch.where(active, s, s_prev)
            if callback is not None:
                callback(i, z, loss)
            if stop.done:
                break
        final, _ = completion_loss(G, D, z, y, w, hp.lam)
    return z, final, history
