"""The oracle itself: its gradient, its update rule, batch independence, restarts, Adam."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gcomp.train import reference  # noqa: E402
from gcomp.engine.backends import open_backend  # noqa: E402
from gcomp.engine.masks import make_mask  # noqa: E402
from gcomp.engine.search import SearchParams, momentum_update  # noqa: E402
from gcomp.train.checkpoint import load_models  # noqa: E402


def _inputs(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, cfg.zdim, generator=g) * 2 - 1
    y = torch.rand(n, 3, cfg.size, cfg.size, generator=g) * 2 - 1
    w = torch.from_numpy(make_mask("center", cfg.size))[None, None].repeat(n, 1, 1, 1)
    return z, y, w


def test_gradient_matches_finite_differences(tiny_ckpt):
    cfg, G, D = load_models(tiny_ckpt)
    G, D = G.double(), D.double()
    z, y, w = (t.double() for t in _inputs(cfg, 2))
    loss, grad = reference.loss_and_grad(G, D, z, y, w, lam=0.1)
    eps = 1e-6
    for i, j in [(0, 0), (0, 5), (1, 3), (1, cfg.zdim - 1)]:
        zp, zm = z.clone(), z.clone()
        zp[i, j] += eps
        zm[i, j] -= eps
        lp, _ = reference.completion_loss(G, D, zp, y, w, 0.1)
        lm, _ = reference.completion_loss(G, D, zm, y, w, 0.1)
        fd = (lp[i] - lm[i]).item() / (2 * eps)
        assert fd == pytest.approx(grad[i, j].item(), rel=1e-4, abs=1e-6)


def test_loss_is_the_seeds_formula(tiny_ckpt):
    cfg, G, D = load_models(tiny_ckpt)
    z, y, w = _inputs(cfg, 3)
    loss, x = reference.completion_loss(G, D, z, y, w, lam=0.5)
    with torch.no_grad():
        logit = D(G(z))
    expect = (w * G(z) - w * y).abs().sum((1, 2, 3)) + 0.5 * torch.log1p(torch.exp(-logit))
    torch.testing.assert_close(loss, expect)


def test_momentum_update_hand_worked():
    # mom 0.9, lr 0.1, v = 1, g = 2: v' = 0.9 - 0.2 = 0.7; z' = 0.5 - 0.9*1 + 1.9*0.7 = 0.93
    z, v, g = np.array([0.5, 0.9]), np.array([1.0, 1.0]), np.array([2.0, -2.0])
    z2, v2 = momentum_update(z, v, g, lr=0.1, momentum=0.9)
    np.testing.assert_allclose(v2, [0.7, 1.1])
    np.testing.assert_allclose(z2, [0.93, 1.0])  # 0.9 - 0.9 + 1.9*1.1 = 2.09, clipped to 1
    tz, tv = reference.momentum_step(torch.tensor(z), torch.tensor(v), torch.tensor(g), 0.1, 0.9)
    np.testing.assert_allclose(tz.numpy(), z2)
    np.testing.assert_allclose(tv.numpy(), v2)


def test_batch_independence(tiny_ckpt):
    """BatchNorm in eval mode: an image's result does not depend on the rest of its batch."""
    cfg, G, D = load_models(tiny_ckpt)
    z, y, w = _inputs(cfg, 4)
    hp = SearchParams(iters=15)
    zb, lb, _ = reference.search(G, D, z, y, w, hp)
    assert (zb - z).abs().max() > 0.1  # the search moved: the comparison below means something
    for i in range(4):
        zi, li, _ = reference.search(G, D, z[i:i + 1], y[i:i + 1], w[i:i + 1], hp)
        torch.testing.assert_close(zi[0], zb[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(li[0], lb[i], rtol=1e-4, atol=1e-4)


def test_search_descends_with_small_lr_and_adam(tiny_ckpt):
    cfg, G, D = load_models(tiny_ckpt)
    z, y, w = _inputs(cfg, 4)
    with torch.no_grad():
        start, _ = reference.completion_loss(G, D, z, y, w, 0.1)
    for hp in (SearchParams(iters=30, lr=1e-3), SearchParams(iters=30, optimizer="adam")):
        zf, final, hist = reference.search(G, D, z, y, w, hp)
        assert len(hist) == 30 and (final < start).all(), hp.optimizer
        assert zf.abs().max() <= 1  # projected onto the prior's box


def test_backend_step_equals_the_seed_update(tiny_ckpt):
    with open_backend(tiny_ckpt, "torch") as b:
        cfg = b.info
        rng = np.random.default_rng(0)
        z = rng.uniform(-1, 1, (2, cfg.zdim)).astype(np.float32)
        v = rng.normal(0, 0.01, (2, cfg.zdim)).astype(np.float32)
        y = rng.uniform(-1, 1, (2, 3, cfg.size, cfg.size)).astype(np.float32)
        w = np.ones((2, 1, cfg.size, cfg.size), np.float32)
        z2, v2, loss = b.step(z, v, y, w, 0.01, 0.9, 0.1)
        _, G, D = load_models(tiny_ckpt)
        l_ref, g = reference.loss_and_grad(G, D, *(torch.from_numpy(a) for a in (z, y, w)), 0.1)
        ze, ve = momentum_update(z, v, g.numpy(), 0.01, 0.9)
        np.testing.assert_allclose(z2, ze, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v2, ve, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loss, l_ref.numpy(), rtol=1e-5)
        # the generic step-driven search and the backend's own loop agree
        from gcomp.engine.backends.base import Backend

        hp = SearchParams(iters=5).resolved()
        a = b.search(z, y, w, hp)
        g_res = Backend.host_search(b, z, y, w, hp)
        np.testing.assert_allclose(a.z, g_res.z, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.loss, g_res.loss, rtol=1e-4)
