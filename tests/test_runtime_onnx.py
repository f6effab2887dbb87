"""The lean runtime: the onnxruntime backend agrees with the torch oracle and never imports torch."""
import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from synth import make_faces  # noqa: E402
from gcomp.engine.backends import open_backend  # noqa: E402
from gcomp.engine.api import complete  # noqa: E402
from gcomp.engine.options import CompleteOptions  # noqa: E402
from gcomp.engine.search import SearchParams  # noqa: E402



def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_search_matches_the_torch_backend(tiny_ckpt, exported):
    rng = np.random.default_rng(0)
    # onnxruntime by name: --backend auto picks openvino on CPUs with native bf16 (tests/test_cpu_matrix.py)
    with open_backend(tiny_ckpt) as tb, open_backend(exported, "onnxruntime") as ob:
        assert ob.name == "onnxruntime" and ob.info.config_hash == tb.info.config_hash
        n, s = 4, tb.info.size
        z0 = rng.uniform(-1, 1, (n, tb.info.zdim)).astype(np.float32)
        y = rng.uniform(-1, 1, (n, 3, s, s)).astype(np.float32)
        w = np.ones((n, 1, s, s), np.float32)
        w[:, :, 8:24, 8:24] = 0
        np.testing.assert_allclose(ob.generate(z0), tb.generate(z0), atol=1e-5)
        hp = SearchParams(iters=20, lr=3e-4).resolved()
        a, b = tb.search(z0, y, w, hp), ob.search(z0, y, w, hp)
        # fp32 graphs vs autograd: ~1e-6 per step; 20 steps of a contraction stay well under 1e-3
        np.testing.assert_allclose(b.z, a.z, atol=1e-3)
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-4)


def test_complete_without_torch_matches_torch(tiny_ckpt, exported, tmp_path):
    """`python -m gcomp complete` on the export folder with torch blocked from import."""
    src = tmp_path / "in"
    make_faces(src, n=4)
    torch_out, ort_out = tmp_path / "torch", tmp_path / "ort"
    seed = SearchParams.seed()  # the same settings on both sides (the export recommends its own, the checkpoint none)
    complete(src, torch_out, tiny_ckpt, options=CompleteOptions(search=SearchParams(iters=50, lr=seed.lr, patience=0)),
             progress=False)
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        sys.argv = ["gcomp", "complete", {str(src)!r}, {str(ort_out)!r}, "--model", {str(exported)!r},
                    "--backend", "onnxruntime", "--iters", "50", "--lr", {str(seed.lr)!r}, "--early-stop", "0",
                    "--no-progress"]
        from gcomp.cli.app import main
        try:
            main()
        finally:
            assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((ort_out / "gcomp-summary.json").read_text())["settings"]["backend"] == "onnxruntime"
    for f in sorted(src.glob("*.png")):
        a, b = cv2.imread(str(torch_out / f.name)), cv2.imread(str(ort_out / f.name))
        assert psnr(a, b) > 35, f.name


def test_unroll_must_divide_iters_and_adam_is_refused(exported):
    from gcomp.engine.backends import BackendError

    with open_backend(exported) as ob:
        s = ob.info.size
        args = (np.zeros((1, ob.info.zdim), np.float32), np.zeros((1, 3, s, s), np.float32),
                np.ones((1, 1, s, s), np.float32))
        with pytest.raises(BackendError, match="adam"):
            ob.search(*args, SearchParams(iters=2, optimizer="adam"))


def test_mismatched_export_folder_is_refused(exported, tmp_path):
    import shutil

    from gcomp.engine.backends import BackendError

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(exported / "step.onnx", bad / "step.onnx")
    with pytest.raises(BackendError, match="generator.onnx"):
        open_backend(bad).activate()
    shutil.copy(exported / "step.onnx", bad / "generator.onnx")
    with pytest.raises(BackendError, match="not a gcomp generator"):
        open_backend(bad).activate()


def test_streams_split_the_batch_without_changing_results(exported):
    from synth import search_inputs

    with open_backend(exported, "onnxruntime", streams=1) as one:
        z, y, w = search_inputs(9, one.info.size, one.info.zdim)
        v = np.full_like(z, 0.01)
        ref = one.step(z, v, y, w, 0.01, 0.9, 0.1)
    # 2: parts of 5 and 4 images; 8: too few images per stream, so one session does all
    for streams in (2, 8):
        with open_backend(exported, "onnxruntime", streams=streams, threads=2) as ob:
            assert ob.settings()["streams"] == streams
            for a, b in zip(ob.step(z, v, y, w, 0.01, 0.9, 0.1), ref):
                # images are independent; only the summation order may differ (kernels block by batch size)
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_static_batch_model_takes_any_number_of_images(tiny_ckpt, exported, tmp_path):
    """`gcomp export --batch 4`: a job of 6 images (a short last batch) with 2 restarts (8 and 4 search rows)
    runs in parts of exactly 4 and gives what the dynamic export gives."""
    from gcomp.export import export_model

    static = tmp_path / "static"
    export_model(tiny_ckpt, static, batch=4, validate=False)
    src = tmp_path / "in"
    make_faces(src, n=6)
    opts = CompleteOptions(batch_size=3, restarts=2, search=SearchParams(iters=6, lr=3e-4, patience=2))
    outs = {}
    for name, model in (("static", static), ("dynamic", exported)):
        with open_backend(model, "onnxruntime") as be:  # by name: auto picks openvino on bf16 CPUs
            assert be.fixed_batch == (4 if name == "static" else None)
            s = complete(src, tmp_path / name, backend=be, options=opts, progress=False)
            assert be.is_active  # the caller's backend stays open; complete() closed only what it opened
        assert s.done == 6 and not s.failed
        outs[name] = [cv2.imread(str(tmp_path / name / f.name)) for f in sorted(src.glob("*.png"))]
    for a, b in zip(outs["static"], outs["dynamic"]):
        assert psnr(a, b) > 45
