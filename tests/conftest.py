"""Shared fixtures: a tiny random DCGAN checkpoint and small synthetic images (never CelebA)."""
from __future__ import annotations

import pytest
from synth import make_faces


def calibrate_batchnorm(torch, G, D, cfg):
    """Running statistics from forward passes, as training would leave them: with DCGAN's init
    and the default (0, 1) statistics G's output is ~1e-4 and every gradient vanishes."""
    bns = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    G.train(), D.train()
    with torch.no_grad():
        for _ in range(4):
            x = G(torch.rand(64, cfg.zdim) * 2 - 1)
            D(torch.cat([x, torch.rand_like(x) * 2 - 1]))
    for m in bns:
        m.momentum = 0.1
    G.eval(), D.eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A size-32 gf=df=8 zdim=16 model with non-trivial BatchNorm statistics."""
    torch = pytest.importorskip("torch")
    from gcomp.train import checkpoint
    from gcomp.train.model import ModelConfig, build

    torch.manual_seed(0)
    cfg = ModelConfig(size=32, zdim=16, gf=8, df=8)
    G, D = build(cfg)
    calibrate_batchnorm(torch, G, D, cfg)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", cfg, G, D, step=0)


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "in")
