"""gcomp eval: metrics against hand-computed values, OpenCV baselines, and the CLI on a tar."""
import json
import tarfile

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from gcomp.engine.evaluate import hole_l1, metrics, opencv_inpaint, psnr, read_images, ssim
from gcomp.engine.masks import make_mask


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16  # MSE = 256 / 48
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 * 48 / 256))
    where = np.zeros((4, 4), bool)
    where[0, :2] = True  # 6 values, one off by 16: MSE = 256 / 6
    assert psnr(a, b, where) == pytest.approx(10 * np.log10(255**2 * 6 / 256))
    assert psnr(a, a) == float("inf")
    assert hole_l1(a, b, where) == pytest.approx(16 / 6 / 255)


def test_ssim_against_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (5, 5), 2)
    b = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    ref = skm.structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
    assert ssim(a, b) == pytest.approx(ref, abs=0.02)
    assert ssim(a, a) == pytest.approx(1.0)


def test_opencv_baselines_fill_the_hole_smoothly():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = np.linspace(0, 250, 32, dtype=np.uint8)[None, :, None]  # a horizontal ramp
    known = make_mask("center", 32)
    for method in ("telea", "ns"):
        out = opencv_inpaint(img, known, method)
        m = metrics(out, img, known)
        assert np.array_equal(out[known > 0], img[known > 0])
        assert m["psnr"] > 25 and m["ssim"] > 0.8, (method, m)


def test_eval_cli_on_a_tar(tiny_ckpt, tmp_path):
    pytest.importorskip("torch")
    from synth import make_faces

    from gcomp.cli.app import app

    paths = make_faces(tmp_path / "f", n=5, suffix=".jpg")
    tar = tmp_path / "val.tar"
    with tarfile.open(tar, "w") as t:
        for p in paths:
            t.add(p, arcname=p.name)
    assert [k for k, _ in read_images(tar, limit=3)] == ["face_00.jpg", "face_01.jpg", "face_02.jpg"]
    out, grid = tmp_path / "e.json", tmp_path / "grid.png"
    r = CliRunner().invoke(app, ["eval", str(tar), "--model", str(tiny_ckpt), "--mask", "center,half",
                                 "--iters", "10", "--limit", "4", "--json", str(out), "--grid", str(grid)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert [x["mask"] for x in rep["results"]] == ["center", "half"]
    for x in rep["results"]:
        assert x["n"] == 4 and set(x["scores"]) == {"gcomp", "telea", "ns"}
        assert 0 < x["scores"]["telea"]["psnr"] < 100 and -1 <= x["scores"]["gcomp"]["ssim"] <= 1
        assert [i for i, _ in x["psnr_by_iter"]] == list(range(1, 11))
    g = cv2.imread(str(grid))
    assert g is not None and g.shape[1] > 16 * 32
    assert cv2.imread(str(tmp_path / "grid_psnr.png")) is not None
    assert "cv2.inpaint Telea" in r.stdout and "Context Encoder" in r.stdout
