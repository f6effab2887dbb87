"""gcomp eval: metrics against hand-computed values, OpenCV baselines, and the CLI on a tar."""
import json
import tarfile

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from gcomp.engine import images
from gcomp.engine.evaluate import hole_l1, metrics, noisy_input, opencv_inpaint, psnr, read_images, ssim
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


def test_ssim_is_scikit_images_convention():
    """Per channel, Gaussian window sigma 1.5, population covariance, averaged: scikit-image's numbers."""
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    for shape in ((32, 32, 3), (64, 48, 3)):
        a = cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (5, 5), 2)
        b = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
        ref = skm.structural_similarity(a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255)
        assert ssim(a, b) == pytest.approx(ref, abs=1e-6)
        gray = skm.structural_similarity(a[:, :, 0], b[:, :, 0], gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=255)
        assert ssim(a[:, :, :1], b[:, :, :1]) == pytest.approx(gray, abs=1e-6)


def test_a_true_fill_scores_perfect_and_a_red_blue_swap_does_not():
    rng = np.random.default_rng(1)
    truth = cv2.GaussianBlur(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), (5, 5), 2)
    known = make_mask("center", 32)
    m = metrics(truth.copy(), truth, known)
    assert m["psnr"] == float("inf") and m["psnr_hole"] == float("inf") and m["ssim"] == pytest.approx(1.0)
    assert m["l1_hole"] == 0
    swapped = truth[:, :, ::-1]
    assert metrics(swapped, truth, known)["psnr"] < 40


def test_noisy_input_keeps_the_known_pixels_and_is_seeded_by_name():
    truth = np.full((16, 16, 3), 100, np.uint8)
    known = make_mask("center", 16)
    a, b = noisy_input(truth, known, "a.png"), noisy_input(truth, known, "b.png")
    assert np.array_equal(a[known > 0], truth[known > 0]) and not np.array_equal(a[known == 0], truth[known == 0])
    assert np.array_equal(a, noisy_input(truth, known, "a.png")) and not np.array_equal(a, b)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_outputs_never_depend_on_the_holes_content(backend, tiny_ckpt):
    """Every blend and backend: the same written bytes whatever the input held in its hole."""
    import gcomp

    if backend == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is an optional extra")
    model = tiny_ckpt if backend == "torch" else None
    rng = np.random.default_rng(2)
    with gcomp.open_model(model, backend=backend, **({"precision": "fp32"} if backend == "openvino" else {})) as m:
        s = m.size
        truth = cv2.GaussianBlur(rng.integers(0, 255, (s, s, 3), dtype=np.uint8), (5, 5), 2)
        for kind in ("center", "left", "random"):
            known = make_mask(kind, s, rng=np.random.default_rng(0))
            hole = known == 0
            black, noise = truth.copy(), truth.copy()
            black[hole] = 0
            noise[hole] = rng.integers(0, 256, (int(hole.sum()), 3), dtype=np.uint8)
            for blend in ("none", "poisson", "poisson:0.3", "auto"):
                outs = [images.encode(cv2.cvtColor(m.complete(x, hole, iters=3, blend=blend), cv2.COLOR_RGB2BGR), ".png")
                        for x in (truth, black, noise)]
                assert outs[0] == outs[1] == outs[2], (backend, kind, blend)


def test_eval_scores_equal_an_independent_scoring_of_completes_files(tmp_path):
    """gcomp eval (noise in the hole) == `gcomp complete` run by hand on those inputs, scored by scikit-image."""
    skm = pytest.importorskip("skimage.metrics")
    from synth import make_faces

    from gcomp.cli.app import app

    make_faces(tmp_path / "faces", n=5, size=64)
    work, js = tmp_path / "work", tmp_path / "e.json"
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "faces"), "--mask", "center,half", "--iters", "2",
                                 "--json", str(js), "--out", str(work), "--grid", str(tmp_path / "grid.png")])
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    assert cv2.imread(str(tmp_path / "grid.png")) is not None
    for res in rep["results"]:
        kind = res["mask"]
        inp, out = work / kind / "input", work / kind / "output"
        again = tmp_path / f"again-{kind}"
        r = CliRunner().invoke(app, ["complete", str(inp), str(again), "--mask", kind,
                                     "--iters", "2", "--face", "off", "--no-progress"])
        assert r.exit_code == 0, r.output
        psnrs, ssims = [], []
        for truth_path in sorted((tmp_path / "faces").glob("*.png")):
            written = (again / truth_path.name).read_bytes()
            assert written == (out / truth_path.name).read_bytes()  # eval scored exactly these files
            truth = cv2.cvtColor(cv2.imread(str(truth_path)), cv2.COLOR_BGR2RGB)
            got = cv2.cvtColor(cv2.imread(str(again / truth_path.name)), cv2.COLOR_BGR2RGB)
            noisy = cv2.cvtColor(cv2.imread(str(inp / truth_path.name)), cv2.COLOR_BGR2RGB)
            known = np.all(noisy == truth, axis=2)  # noise equals the truth by chance on ~0 pixels
            assert np.array_equal(got[known], truth[known])  # the known pixels, channels in order
            psnrs.append(skm.peak_signal_noise_ratio(truth, got, data_range=255))
            ssims.append(skm.structural_similarity(truth, got, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                                   use_sample_covariance=False, data_range=255))
        assert res["scores"]["gcomp"]["psnr"] == pytest.approx(np.mean(psnrs), abs=0.01)
        assert res["scores"]["gcomp"]["ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)
        names = sorted(p.name for p in (tmp_path / "faces").glob("*.png"))
        assert sorted(res["per_face"]) == names  # each face's own scores, for paired comparisons
        assert [res["per_face"][n][0] for n in names] == pytest.approx(psnrs, abs=0.01)
        assert [res["per_face"][n][1] for n in names] == pytest.approx(ssims, abs=1e-4)
    from gcomp.benchmarks.paired import paired

    same = paired(rep, rep)  # a report against itself: no difference, no face better
    assert [r["mask"] for r in same] == ["center", "half"] and all(r["n"] == 5 for r in same)
    assert all(r[m]["mean"] == 0 and r[m]["better"] == 0 for r in same for m in ("psnr", "ssim"))
    better = json.loads(js.read_text())
    for res in better["results"]:
        res["per_face"] = {k: [v[0] + 1.0, v[1] + 0.01] for k, v in res["per_face"].items()}
    up = paired(rep, better)
    assert all(r["psnr"]["mean"] == pytest.approx(1.0) and r["psnr"]["better"] == 1.0 for r in up)
    assert all(r["ssim"]["mean"] == pytest.approx(0.01) for r in up)


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
        assert x["n"] == 4 and set(x["scores"]) == {"gcomp", "telea", "ns", "harmonic"}
        assert 0 < x["scores"]["telea"]["psnr"] < 100 and -1 <= x["scores"]["gcomp"]["ssim"] <= 1
    g = cv2.imread(str(grid))
    assert g is not None and g.shape[1] > 10 * 32
    assert "cv2.inpaint Telea" in r.stdout and "Context Encoder" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--limit", "0"], "error: --limit must be >= 1, got 0"),
    (["--limit", "-2"], "error: --limit must be >= 1, got -2"),
    (["--mask", ","], "error: --mask: give at least one mask kind"),
    (["MISSING"], "error: data path does not exist: "),
])
def test_eval_refuses_bad_arguments_before_the_model_loads(args, needle, tmp_path, monkeypatch):
    from synth import make_faces

    from gcomp.cli.app import app

    def load(*a, **k):
        raise AssertionError("the model loaded before the arguments were checked")

    monkeypatch.setattr("gcomp.engine.api.open_model", load)
    make_faces(tmp_path / "f", n=2)
    data = str(tmp_path / ("missing.tar" if args == ["MISSING"] else "f"))
    r = CliRunner().invoke(app, ["eval", data, *(a for a in args if a != "MISSING")])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(needle), r.stderr


def test_eval_reports_each_unreadable_file_it_skips(tmp_path):
    from synth import make_faces

    from gcomp.cli.app import app

    d = tmp_path / "f"
    make_faces(d, n=2, size=64)
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("not an image")
    (d / "torn.png").write_bytes((d / "face_00.png").read_bytes()[:100])
    r = CliRunner().invoke(app, ["eval", str(d), "--mask", "center", "--iters", "2", "--limit", "5"])
    assert r.exit_code == 0, r.output
    # auto's own notes about what it picked (on a CPU with native bf16: OpenVINO bf16) are not about the files
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")
             and not line.startswith(("note: --backend auto", "note: openvino:"))]
    assert notes == [f"note: {d / 'empty.png'}: skipped, empty file",
                     f"note: {d / 'text.png'}: skipped, not a readable image (corrupt or unsupported format)",
                     f"note: {d / 'torn.png'}: skipped, not a readable image (corrupt or unsupported format)"]
    assert "(2 images, 3 unreadable skipped, 2 iterations)" in " ".join(r.stdout.split())  # Rich wraps the title
    tar = tmp_path / "t.tar"  # a tar's members are named by their names inside it
    with tarfile.open(tar, "w") as t:
        t.add(d / "empty.png", arcname="empty.png")
        t.add(d / "face_01.png", arcname="face_01.png")
    skipped = []
    assert [k for k, _ in read_images(tar, on_skip=lambda *a: skipped.append(a))] == ["face_01.png"]
    assert skipped == [("empty.png", "empty file")]
