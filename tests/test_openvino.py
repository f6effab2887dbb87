"""The openvino backend against the torch oracle; precision choice; the compiled-model cache."""
import os

import numpy as np
import pytest

from synth import search_inputs
from gcomp.engine.backends import BackendError, open_backend
from gcomp.engine.backends.openvino_backend import cpu_has_native_bf16, pick_precision


def test_auto_precision_follows_the_cpu():
    assert cpu_has_native_bf16("flags\t\t: fpu sse avx2\n") is False
    assert cpu_has_native_bf16("flags\t\t: fpu avx512f avx512_bf16\n") is True
    assert pick_precision("auto", native_bf16=False) == "fp32"
    assert pick_precision("auto", native_bf16=True) == "bf16"
    assert pick_precision("bf16", native_bf16=False) == "bf16"
    with pytest.raises(BackendError):
        pick_precision("int4")


def test_missing_openvino_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("no openvino")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(BackendError, match=r"gcomp\[openvino\]"):
        open_backend(tmp_path, "openvino").activate()



def test_matches_the_torch_reference_and_caches(tiny_ckpt, exported):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    from gcomp.engine.search import SearchParams

    with open_backend(tiny_ckpt, "torch") as tb, open_backend(exported, "openvino", precision="fp32") as vb:
        z0, y, w = search_inputs(3, tb.info.size, tb.info.zdim)
        np.testing.assert_allclose(vb.generate(z0), tb.generate(z0), atol=1e-4)
        hp = SearchParams(iters=10, lr=3e-4).resolved()
        a, b = tb.search(z0, y, w, hp), vb.search(z0, y, w, hp)
        np.testing.assert_allclose(b.z, a.z, atol=1e-3)  # the same tolerance as onnxruntime's test
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-4)
        cache = vb.cache_dir
    assert any(cache.iterdir())  # compiled models were cached


def test_cache_is_not_stale_when_the_model_changes(exported, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    import shutil

    from gcomp.export import write_metadata

    m = tmp_path / "m"
    shutil.copytree(exported, m, ignore=shutil.ignore_patterns(".openvino_cache"))
    with open_backend(m, "openvino", precision="fp32") as vb:
        before = vb.cache_dir
        z = np.zeros((1, vb.info.zdim), np.float32)
        x0 = vb.generate(z)
    # a different model in the same files: new cache entries, and the new model's output
    import onnx
    from onnx import numpy_helper

    g = onnx.load(m / "generator.onnx")
    for init in g.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 4:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
            break
    onnx.save(g, m / "generator.onnx")
    write_metadata(m / "generator.onnx", {})
    with open_backend(m, "openvino", precision="fp32") as vb:
        after = vb.cache_dir
        x1 = vb.generate(z)
    assert after != before and any(after.iterdir()) and not np.allclose(x0, x1)


def test_opening_reads_each_graph_once_to_hash_it(exported, tmp_path, monkeypatch):
    """The validation check and the cache folder's name both need the graphs' sha256: opening once hashed each
    file twice."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    import hashlib
    import json
    import shutil

    from gcomp.export.validate import hashes

    m = tmp_path / "m"
    shutil.copytree(exported, m, ignore=shutil.ignore_patterns(".openvino_cache"))
    graphs = [m / "generator.onnx", m / "step.onnx"]
    (m / "validation.json").write_text(json.dumps({"ok": True, "sha256": hashes(*graphs)}))
    hashed, real = [0], hashlib.sha256

    class Counting:  # hashlib.sha256, counting the bytes it is given
        def __init__(self, data=b""):
            self.h = real()
            self.update(data)

        def update(self, data):
            hashed[0] += len(data)
            self.h.update(data)

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    with open_backend(m, "openvino", precision="fp32") as vb:
        assert any(vb.cache_dir.iterdir())
    size = sum(os.path.getsize(g) for g in graphs)
    assert size <= hashed[0] <= size + 1000, (hashed[0], size)  # + the cache name's hash of the two digests


def test_cli_openvino_equals_onnxruntime(exported, tmp_path):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    import cv2
    from synth import make_faces
    from typer.testing import CliRunner

    from gcomp.cli.app import app

    src = tmp_path / "in"
    make_faces(src, n=3)
    run = CliRunner().invoke
    for be in ("onnxruntime", "openvino"):
        # fp32 on both: openvino's default (--precision auto) is bf16 on CPUs with native bf16
        fp32 = ["--precision", "fp32"] if be == "openvino" else []
        r = run(app, ["complete", str(src), str(tmp_path / be), "--model", str(exported), "--backend", be,
                      "--iters", "20", "--lr", "3e-4", "--threads", "2", "--no-progress", *fp32])
        assert r.exit_code == 0, r.output
    for f in src.glob("*.png"):
        a, b = (cv2.imread(str(tmp_path / be / f.name)).astype(float) for be in ("onnxruntime", "openvino"))
        assert 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12)) > 40
    r = run(app, ["complete", str(src), str(tmp_path / "x"), "--model", str(exported), "--backend", "onnxruntime",
                  "--precision", "bf16"])
    assert r.exit_code == 2 and "--precision does not apply to the onnxruntime backend" in r.stderr


def test_streams_split_the_batch_without_changing_results(exported):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    with open_backend(exported, "openvino", precision="fp32") as one:
        z, y, w = search_inputs(5, one.info.size, one.info.zdim)
        v = np.full_like(z, 0.01)
        ref = one.step(z, v, y, w, 0.01, 0.9, 0.1)
    for streams in (2, 3, 8):  # uneven parts, and more streams than images
        with open_backend(exported, "openvino", precision="fp32", streams=streams, threads=2) as vb:
            assert vb.settings()["streams"] == streams
            for a, b in zip(vb.step(z, v, y, w, 0.01, 0.9, 0.1), ref):
                # images are independent; only the summation order may differ (oneDNN picks its blocking
                # by batch size): a few float32 ulps
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_precision_notes_say_what_runs(exported):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    import openvino as ov

    native = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with open_backend(exported, "openvino", precision="bf16") as vb:
        # where the CPU cannot compute bf16, OpenVINO runs f32 and the backend says so
        assert vb.settings()["precision"] == ("bf16" if native else "fp32")
        assert bool(vb.notes) != native
    with open_backend(exported, "openvino", precision="fp32") as vb:
        assert vb.notes == [] and vb.settings()["precision"] == "fp32"


def test_auto_backend_picks_openvino_only_where_it_is_faster(exported, tiny_ckpt, monkeypatch):
    import importlib.util

    from gcomp.engine.backends import auto_backend

    assert auto_backend(tiny_ckpt, "cpu", native_bf16=True)[0] == "torch"
    assert auto_backend(exported, "cuda", native_bf16=True)[0] == "onnxruntime"
    assert auto_backend(exported, "cpu", native_bf16=False)[0] == "onnxruntime"
    if importlib.util.find_spec("openvino") is not None:
        name, why = auto_backend(exported, "cpu", native_bf16=True)
        assert name == "openvino" and "native bf16" in why
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    name, why = auto_backend(exported, "cpu", native_bf16=True)
    assert name == "onnxruntime" and "not installed" in why


def test_the_encoder_runs_on_openvino_beside_an_openvino_search():
    """With the openvino backend the encoder is compiled there too (at its precision: half the encoder's time on a
    bf16 CPU, and no second thread pool beside OpenVINO's); its latents equal ONNX Runtime's within the tolerance
    of the precision it runs (fp32 here, pinned)."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    import gcomp

    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (4, 3, 64, 64)).astype(np.float32)
    known = np.ones((4, 1, 64, 64), np.float32)
    known[:, :, 16:48, 16:48] = 0
    with gcomp.open_model("small", backend="openvino", precision="fp32") as ov_model, \
            gcomp.open_model("small", backend="onnxruntime") as ort_model:
        enc_ov, enc_ort = ov_model.encoder(), ort_model.encoder()
        assert (enc_ov.runtime, enc_ort.runtime) == ("openvino", "onnxruntime")
        assert np.allclose(enc_ov(y, known), enc_ort(y, known), atol=1e-4)


def test_subpixel_rewrite_is_the_same_map(exported, tmp_path):
    """Every transposed convolution of the generator and the step graph rewritten as Conv -> DepthToSpace computes
    the same outputs (ONNX Runtime fp32 on both; measured 1e-6 on the bundled models)."""
    import onnx
    import onnxruntime as ort

    from gcomp.engine.backends.subpixel import rewrite

    for name in ("generator.onnx", "step.onnx"):
        model = onnx.load(str(exported / name))
        ops = [n.op_type for n in model.graph.node]
        assert rewrite(model) == ops.count("ConvTranspose") > 0
        assert "ConvTranspose" not in [n.op_type for n in model.graph.node]
        onnx.save(model, str(tmp_path / name))
        a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (exported / name, tmp_path / name))
        rng = np.random.default_rng(0)
        feeds = {i.name: rng.uniform(-1, 1, [d if isinstance(d, int) else 3 for d in i.shape]).astype(np.float32)
                 for i in a.get_inputs()}
        for out_a, out_b in zip(a.run(None, feeds), b.run(None, feeds)):
            np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-5)


def test_bf16_runs_the_subpixel_copies(tmp_path):
    """At bf16 both graphs are compiled from their sub-pixel copies in the cache folder, and G(z) and the step's
    loss stay within bf16's reach of ONNX Runtime fp32 (bundled small model, measured |dx| 0.007 of [-1, 1];
    tolerances 0.05 and 3%)."""
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    import shutil

    from gcomp.engine.api import MODELS
    from gcomp.engine.backends.openvino_backend import SUBPIXEL_SUFFIX
    from gcomp.engine.search import SearchParams

    m = tmp_path / "small"
    shutil.copytree(MODELS / "small", m, ignore=shutil.ignore_patterns(".openvino_cache"))
    with open_backend(m, "onnxruntime") as rb, open_backend(m, "openvino", precision="bf16") as vb:
        assert all((vb.cache_dir / (g + SUBPIXEL_SUFFIX)).is_file() for g in ("generator", "step"))
        z0, y, w = search_inputs(8, rb.info.size, rb.info.zdim)
        assert np.abs(vb.generate(z0) - rb.generate(z0)).max() < 0.05
        hp = SearchParams(iters=2, lr=3e-4).resolved()
        np.testing.assert_allclose(vb.search(z0, y, w, hp).loss, rb.search(z0, y, w, hp).loss, rtol=0.03)
    with open_backend(m, "openvino", precision="fp32") as vb:  # fp32 compiles the generator as exported
        assert vb.settings()["precision"] == "fp32"


def test_one_openvino_model_serves_several_threads(exported):
    """An infer request runs one call at a time: from 4 threads at once a second call raised 'Infer Request is busy'.
    Calls now take turns (Backend.serial): the same images as one thread's, none refused."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    from concurrent.futures import ThreadPoolExecutor

    import gcomp

    faces = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(8)]
    with gcomp.open_model(exported, backend="openvino", precision="fp32") as m:
        alone = [m.complete(f, "center", name=f"f{i}", iters=2) for i, f in enumerate(faces)]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda i: m.complete(faces[i], "center", name=f"f{i}", iters=2), range(8)))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))
