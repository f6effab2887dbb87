"""Shared fixtures: a tiny random DCGAN checkpoint and small synthetic images (never CelebA)."""
from __future__ import annotations

import pytest
from synth import calibrate_batchnorm, make_faces  # noqa: F401


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


@pytest.fixture(scope="session")
def exported(tiny_ckpt, tmp_path_factory):
    """tiny_ckpt exported to ONNX (fp32, dynamic batch), without validation."""
    from gcomp.export import export_model

    out = tmp_path_factory.mktemp("export")
    export_model(tiny_ckpt, out, validate=False)
    return out


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "in")
