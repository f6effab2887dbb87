"""gcomp export: the hand-written adjoint step in ONNX vs the PyTorch reference, metadata, CLI, TensorRT-RTX."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from gcomp.train.reference import loss_and_grad, momentum_step  # noqa: E402
from gcomp.export import metadata as md  # noqa: E402
from gcomp.export.onnx_export import (  # noqa: E402
    example_inputs, export_generator, export_model, export_step)
from gcomp.export.validate import ValidationError, errors, session, step_feed, validate_export  # noqa: E402
from gcomp.train import checkpoint  # noqa: E402
from gcomp.train.checkpoint import CheckpointError  # noqa: E402
from gcomp.train.model import ModelConfig, build  # noqa: E402
from synth import calibrate_batchnorm  # noqa: E402

CFG = ModelConfig(size=32, gf=8, df=8, zdim=16)
HP = dict(lr=0.01, momentum=0.9, lam=0.1)


def _random_model(seed: int = 0):
    """DCGAN init, then BatchNorm statistics from forward passes (as training leaves them; with the
    default (0, 1) statistics G's output is ~1e-4 and every gradient vanishes), then perturbed at
    random so that folding a non-trivial scale and shift into the weights is what gets tested."""
    torch.manual_seed(seed)
    G, D = build(CFG)
    calibrate_batchnorm(torch, G, D, CFG, rounds=3)
    bns = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            n = m.num_features
            m.running_mean += 0.1 * m.running_mean.abs().mean() * torch.randn(n)
            m.running_var *= torch.empty(n).uniform_(0.5, 2.0)
            m.weight.uniform_(0.7, 1.3)
            m.bias.uniform_(-0.1, 0.1)
    return G.eval(), D.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    G, D = _random_model()
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", CFG, G, D)


@pytest.fixture(scope="module")
def models(ckpt):
    _, G, D = checkpoint.load_models(ckpt)
    return G, D


@pytest.fixture(scope="module")
def cli_run(ckpt, tmp_path_factory):
    """The fp32 export, made through the CLI (so the CLI path is the one the other tests rely on)."""
    from typer.testing import CliRunner

    from gcomp.cli.app import app

    out = tmp_path_factory.mktemp("export-fp32")
    result = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out)])
    return out, result


@pytest.fixture(scope="module")
def fp32(cli_run):
    out, result = cli_run
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def fp16(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-fp16")
    res = export_model(ckpt, out, precision="fp16")
    return out, res


def _ref_step(G, D, z, v, y, w, lr=0.01, momentum=0.9, lam=0.1):
    loss, grad = loss_and_grad(G, D, z, y, w, lam)
    z2, v2 = momentum_step(z, v, grad, lr, momentum)
    return z2.numpy(), v2.numpy(), loss.numpy()


def _inputs(batch=5, seed=1, w_channels=1):
    z, v, y, w, *_ = example_inputs(CFG, batch, seed)
    if w_channels > 1:  # per-channel weights: a different random mask per channel
        g = torch.Generator().manual_seed(seed)
        w = (torch.rand(batch, w_channels, CFG.size, CFG.size, generator=g) > 0.3).float()
    return z, v, y, w


# -- files, CLI ------------------------------------------------------------------------------------
def test_cli_export_writes_both_graphs_and_a_validation_table(cli_run):
    out, result = cli_run
    assert result.exit_code == 0, result.output
    for name in ("generator.onnx", "step.onnx", "validation.json"):
        assert (out / name).stat().st_size > 0
    text = result.output
    assert text.count("export success") == 2 and "saved as" in text and " MB)" in text
    assert "validation vs PyTorch" in text and "trajectory mean loss" in text and "validation passed" in text
    g = onnx.load(str(out / "step.onnx")).graph
    assert [i.name for i in g.input] == ["z", "v", "y", "w", "lr", "momentum", "lam"]
    assert [o.name for o in g.output] == ["z_out", "v_out", "loss"]
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(g.input[0]) == ["batch", 16] and dims(g.input[3]) == ["batch", "w_channels", 32, 32]
    assert dims(g.input[4]) == [] and dims(g.output[2]) == ["batch"]
    for vi in list(g.input) + list(g.output):
        assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    gg = onnx.load(str(out / "generator.onnx")).graph
    assert [i.name for i in gg.input] == ["z"] and [o.name for o in gg.output] == ["image"]
    assert dims(gg.output[0]) == ["batch", 3, 32, 32]
    # no exporter debug metadata (stack traces with local paths) left on the nodes
    assert all(len(n.metadata_props) == 0 for n in g.node)


def test_validation_report_covers_every_output_and_a_50_step_trajectory(fp32):
    report = json.loads((fp32 / "validation.json").read_text())
    assert report["ok"] and report["trajectory_steps"] == 50 and report["onnx_checker"] == "ok"
    names = {r["name"]: r for r in report["checks"]}
    assert {"image", "loss", "z_out", "v_out", "trajectory step", "trajectory mean loss", "trajectory z (info)",
            "trajectory final loss (info)", "trajectory loss curve (info)"} <= names.keys()
    for n in ("image", "loss", "z_out", "v_out"):
        assert names[n]["max_rel"] <= 1e-4 and names[n]["tol"] == 1e-4


def test_graph_inputs_and_outputs_carry_doc_strings(fp32):
    """Each input and output says what it is, readable with onnx alone (no gcomp)."""
    docs = {}
    for name in ("generator", "step"):
        g = onnx.load(str(fp32 / f"{name}.onnx")).graph
        docs[name] = {vi.name: vi.doc_string for vi in list(g.input) + list(g.output)}
        assert all(len(d) > 20 for d in docs[name].values()), docs[name]
    step, gen = docs["step"], docs["generator"]
    assert "uint8 / 127.5 - 1" in gen["image"] and "[-1, 1]" in gen["image"] and "RGB, NCHW" in gen["image"]
    assert "uint8 / 127.5 - 1" in step["y"] and "1 = known pixel, 0 = hole" in step["w"]
    assert "v' = momentum * v - lr * dL/dz" in step["z_out"] and "clip(" in step["z_out"] and "softplus" in step["z_out"]
    assert "learning rate" in step["lr"] and "momentum" in step["momentum"] and "softplus(-D(G(z)))" in step["lam"]
    assert "zeros at a search's start" in step["v"] and "before the first" in step["loss"]


def test_the_report_names_the_weights_and_the_files_it_validated(fp32, fp16, tmp_path):
    """validation.json carries the weights id and each file's sha256, so a passing report copied beside other files
    (here: a failed fp16 export) is refused with one line naming it, while a fresh export opens with no warning."""
    import shutil

    import gcomp
    from gcomp.engine.backends import BackendError
    from gcomp.engine.backends.exported import file_sha256

    report = json.loads((fp32 / "validation.json").read_text())
    assert report["weights_id"] == md.read_metadata(fp32 / "step.onnx")["weights_id"]
    assert report["sha256"] == {n: file_sha256(fp32 / n) for n in ("generator.onnx", "step.onnx")}
    with gcomp.open_model(fp32) as model:  # a fresh export passes
        assert not [n for n in model.notes if "validation" in n]
    failed = tmp_path / "failed-fp16"
    shutil.copytree(fp16[0], failed)
    theirs = json.loads((failed / "validation.json").read_text())
    (failed / "validation.json").write_text(json.dumps({**theirs, "ok": False}))  # as a failed export leaves it
    with pytest.raises(BackendError, match="failed its validation"):
        gcomp.open_model(failed)
    shutil.copy(fp32 / "validation.json", failed / "validation.json")  # someone "fixes" it with a passing report
    with pytest.raises(BackendError) as e:
        gcomp.open_model(failed)
    line = str(e.value)
    assert "\n" not in line and str(failed / "validation.json") in line and "about other files" in line
    assert "generator.onnx is not the file it validated" in line and "--allow-unvalidated" in line
    with gcomp.open_model(failed, allow_unvalidated=True) as model:
        assert [n for n in model.notes if n.startswith("warning:") and "about other files" in n]


def test_a_metadata_only_change_keeps_the_report_a_weights_change_does_not(fp32, tmp_path):
    """write_metadata (a new recommendation, say) leaves graph and weights as validated: the report follows the file.
    A write that changes what the file claims to be (its weights id) leaves the report behind, and it is refused."""
    import shutil

    import gcomp
    from gcomp.engine.backends import BackendError
    from gcomp.engine.backends.exported import file_sha256

    out = tmp_path / "copy"
    shutil.copytree(fp32, out)
    md.write_metadata(out / "step.onnx", {"defaults": {**md.RECOMMENDED, "iters": 7}, "license": "CC0"})
    assert json.loads((out / "validation.json").read_text())["sha256"]["step.onnx"] == file_sha256(out / "step.onnx")
    with gcomp.open_model(out) as model:
        assert not [n for n in model.notes if "validation" in n]
    md.write_metadata(out / "generator.onnx", {"weights_id": "0123456789abcdef"})
    with pytest.raises(BackendError, match="generator.onnx is not the file it validated.*0123456789abcdef in the file"):
        gcomp.open_model(out)


def test_onnx_step_matches_pytorch_fp32(fp32, models):
    G, D = models
    sess = session(fp32 / "step.onnx")
    for w_channels in (1, 3):  # w broadcasts over channels or carries one weight per channel
        z, v, y, w = _inputs(w_channels=w_channels)
        zo, vo, loss = sess.run(None, step_feed(z, v, y, w, **HP))
        zr, vr, lr_ = _ref_step(G, D, z, v, y, w)
        assert np.abs(vr).max() > 1e-3, "gradient vanishes: the test model is too trivial"
        for a, b in ((zo, zr), (vo, vr), (loss, lr_)):
            assert errors(a, b)[1] < 1e-4
    img = session(fp32 / "generator.onnx").run(None, {"z": z.numpy()})[0]
    with torch.no_grad():
        assert errors(img, G(z).numpy())[1] < 1e-4


def test_onnx_step_matches_pytorch_fp16(fp16, fp32, models):
    out, res = fp16
    assert res["validation"]["ok"] and res["validation"]["precision"] == "fp16"
    G, D = models
    z, v, y, w = _inputs()
    zo, vo, loss = session(out / "step.onnx").run(None, step_feed(z, v, y, w, **HP))
    zr, vr, lr_ = _ref_step(G, D, z, v, y, w)
    # fp16 network: see gcomp.export.validate.TOLERANCES for why v_out (the gradient) gets 1e-1
    assert errors(loss, lr_)[1] < 1e-2 and errors(zo, zr)[1] < 5e-2 and errors(vo, vr)[1] < 1e-1
    # weights really are fp16 inside while the graph IO stays float32
    m = onnx.load(str(out / "step.onnx"))
    types = {i.data_type for i in m.graph.initializer if len(i.dims) >= 2}
    assert types == {onnx.TensorProto.FLOAT16}
    assert all(vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for vi in list(m.graph.input) + list(m.graph.output))
    # and the file is about half the fp32 one
    ratio = (out / "step.onnx").stat().st_size / (fp32 / "step.onnx").stat().st_size
    assert 0.45 < ratio < 0.6, ratio
    ratio = (out / "generator.onnx").stat().st_size / (fp32 / "generator.onnx").stat().st_size
    assert 0.45 < ratio < 0.6, ratio


def test_unrolled_graph_equals_three_single_steps(fp32, models, tmp_path):
    G, D = models
    path = export_step(G, D, CFG, tmp_path / "step3.onnx", "fp32", "dynamic", 3, 18)
    m3, m1 = onnx.load(str(path)), onnx.load(str(fp32 / "step.onnx"))
    # the three steps share one set of weights
    assert len(m3.graph.initializer) == len(m1.graph.initializer)
    assert path.stat().st_size < 1.3 * (fp32 / "step.onnx").stat().st_size
    assert md.read_metadata(path)["unroll"] == 3
    z, v, y, w = _inputs()
    s1, s3 = session(fp32 / "step.onnx"), session(path)
    zk, vk = z.numpy(), v.numpy()
    for k in range(3):
        zk, vk, lk = s1.run(None, step_feed(zk, vk, y, w, **HP))
        if k == 0:
            loss1 = lk
    z3, v3, loss3 = s3.run(None, step_feed(z, v, y, w, **HP))
    assert errors(z3, zk)[1] < 1e-5 and errors(v3, vk)[1] < 1e-4
    assert errors(loss3, loss1)[1] < 1e-6  # the loss at the input z, before the first step


@pytest.mark.parametrize("lam", [0.1, 100.0])
def test_gradient_matches_finite_differences_of_the_graphs_own_loss(fp32, lam):
    """With v = 0, momentum 0 and lr 1, v_out = -dL/dz; compare it with central differences of the graph's
    own `loss` output. lam = 0.1 is the seed's (the contextual term is 99.9% of the gradient); at lam = 100
    the discriminator's term is half of it, so its hand-written backward is checked too.
    |w * (G(z) - y)| is piecewise linear: a difference over +-eps averages the slope over every kink crossed
    (and the ReLU masks' kinks), so eps must be small enough that few pixels cross one, yet large enough
    that fp32 rounding of a loss of ~1.2e3 (ulp 1.2e-4) stays well below eps * |dL/dz| (|dL/dz| ~ 5-12).
    Measured (lam 0.1, three z): relative L2 error 2.4-2.8e-2 at eps 1e-3 (rounding), 1.5-2.0e-2 at 3e-3,
    2.8-3.3e-2 at 1e-2, 4.4-5.6e-2 at 3e-2 (kinks); lam 100: 0.9e-2 at 3e-3. So eps = 3e-3, tolerance 5e-2
    relative L2 and correlation > 0.999 (dropping the D term at lam 100 would be ~50% off)."""
    sess = session(fp32 / "step.onnx")
    eps, n = 3e-3, CFG.zdim
    z, _, y, w = _inputs(batch=1, seed=3)
    z = z.clamp(-0.9, 0.9)
    _, v_out, _ = sess.run(None, step_feed(z, torch.zeros_like(z), y, w, lr=1.0, momentum=0.0, lam=lam))
    grad = -v_out[0].astype(np.float64)
    zs = z.repeat(2 * n, 1)
    for i in range(n):
        zs[2 * i, i] += eps
        zs[2 * i + 1, i] -= eps
    rep = lambda t: t.repeat(2 * n, 1, 1, 1)  # noqa: E731
    _, _, loss = sess.run(None, step_feed(zs, torch.zeros_like(zs), rep(y), rep(w), lr=0.0, momentum=0.0, lam=lam))
    loss = loss.astype(np.float64)
    fd = (loss[0::2] - loss[1::2]) / (2 * eps)
    assert np.abs(grad).max() > 1.0, "gradient too small for a meaningful check"
    rel = np.linalg.norm(fd - grad) / np.linalg.norm(grad)
    corr = np.corrcoef(fd, grad)[0, 1]
    print(f"finite differences (lam {lam}): relative L2 error {rel:.2e}, correlation {corr:.6f}")
    assert rel < 5e-2 and corr > 0.999, (rel, corr, fd, grad)


def test_fixed_batch(models, tmp_path):
    G, _ = models
    path = export_generator(G, CFG, tmp_path / "generator.onnx", "fp32", 3, 18)
    g = onnx.load(str(path)).graph
    assert [d.dim_value for d in g.input[0].type.tensor_type.shape.dim] == [3, 16]
    assert md.read_metadata(path)["batch"] == 3


# -- metadata ------------------------------------------------------------------------------------------
def test_metadata_round_trip(fp32, fp16, ckpt):
    for out, prec in ((fp32, "fp32"), (fp16[0], "fp16")):
        for kind in ("generator", "step"):
            meta = md.read_metadata(out / f"{kind}.onnx")
            assert set(md.KEYS) <= meta.keys()
            assert meta["gcomp_kind"] == kind and meta["precision"] == prec
            assert (meta["size"], meta["channels"], meta["zdim"]) == (32, 3, 16)
            assert meta["unroll"] == 1 and meta["batch"] == "dynamic"
            assert meta["defaults"] == md.RECOMMENDED  # a search measured on the bundled model, not the seed's
            assert meta["weights_id"] and meta["value_range"] == "[-1, 1]" and meta["layout"] == "NCHW"
            assert meta["config_hash"] == CFG.hash() and ModelConfig(**meta["model_config"]) == CFG
            assert meta["mask_convention"] == "w: 1 = known pixel, 0 = hole; mask files: white = fill"
    # raw values are strings, JSON where structured (what a runtime without gcomp would see)
    raw = {p.key: p.value for p in onnx.load(str(fp32 / "step.onnx")).metadata_props}
    assert raw["size"] == "32" and json.loads(raw["defaults"])["lr"] == md.RECOMMENDED["lr"] and raw["batch"] == "dynamic"
    m = md.write_metadata(onnx.load(str(fp32 / "generator.onnx")), {"batch": 8, "unroll": 4, "zdim": 16})
    back = md.read_metadata(m)
    assert back["batch"] == 8 and back["unroll"] == 4 and back["gcomp_kind"] == "generator"
    with pytest.raises(md.MetadataError, match="not a gcomp export"):
        md.read_metadata(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])))


def test_metadata_and_engine_header_readers_need_no_torch(fp32, tmp_path):
    from gcomp.export.trt import pack_engine

    eng = tmp_path / "x.engine"
    eng.write_bytes(pack_engine({"format": "gcomp-trt/1", "precision": "fp32"}, b"PLAN"))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        from gcomp.export import read_metadata, read_engine_header, read_engine
        assert read_metadata({str(fp32 / "step.onnx")!r})["gcomp_kind"] == "step"
        assert read_engine_header({str(eng)!r})["precision"] == "fp32"
        assert read_engine({str(eng)!r})[1] == b"PLAN"
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# -- validation failures and bad inputs -------------------------------------------------------------------
def test_validation_failure_shows_the_numbers(fp32, models, monkeypatch):
    from gcomp.export import validate

    G, D = models
    strict = {k: (v if v is None else 1e-12) for k, v in validate.TOLERANCES["fp32"].items()}
    monkeypatch.setitem(validate.TOLERANCES, "fp32", strict)
    with pytest.raises(ValidationError, match=r"relative error [0-9.e+-]+ > tolerance 1e-12") as e:
        validate_export(fp32, G, D, CFG, trajectory_steps=2)
    assert not e.value.report["ok"]


def test_cli_validation_failure_exits_1(ckpt, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gcomp.cli.app import app
    from gcomp.export import onnx_export

    report = {"precision": "fp32", "unroll": 1, "batch_size": 4, "trajectory_steps": 50,
              "relative_error": "max|a-b|/max|b|", "ok": False,
              "checks": [{"name": "v_out", "max_abs": 0.5, "max_rel": 0.25, "tol": 1e-4, "ok": False}]}

    def fake_export(*a, **k):
        raise ValidationError("validation failed (fp32): v_out: relative error 0.25 > tolerance 0.0001", report)

    monkeypatch.setattr(onnx_export, "export_model", fake_export)
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert "error: validation failed (fp32): v_out: relative error 0.25 > tolerance 0.0001" in r.output
    assert "FAIL" in r.output


def test_a_reexport_leaves_no_stale_validation_or_engines(fp32, ckpt, tmp_path):
    """validation.json describes the graphs it was written with: a re-export with --no-validate into the same folder
    removes it, so the runtime treats the new graphs as unvalidated (as a fresh export's), neither trusting an old
    "ok": true nor refusing them for an old "ok": false. An encoder.onnx of another checkpoint is moved aside."""
    import shutil

    from typer.testing import CliRunner

    import gcomp
    from gcomp.cli.app import app

    out = tmp_path / "again"
    out.mkdir()
    stale = json.loads((fp32 / "validation.json").read_text())  # an earlier export's report, about other graphs
    (out / "validation.json").write_text(json.dumps({**stale, "ok": False}))
    for name in ("generator.engine", "step.engine"):  # an earlier export's TensorRT engines: stale as well
        (out / name).write_bytes(b"an engine built from other graphs")
    # and an encoder trained for another checkpoint, which the runtime would refuse beside the new graphs
    shutil.copy(fp32 / "generator.onnx", out / "encoder.onnx")
    md.write_metadata(out / "encoder.onnx", {"gcomp_kind": "encoder", "weights_id": "0123456789abcdef"})
    (out / "encoder_validation.json").write_text("{}")
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(out), "--no-validate"])
    assert r.exit_code == 0, r.output
    assert not (out / "validation.json").exists()
    assert not (out / "generator.engine").exists() and not (out / "step.engine").exists()
    said = [line for line in r.output.splitlines() if "encoder" in line]
    assert len(said) == 1 and said[0].startswith(f"moved {out / 'encoder.onnx'} aside") and "0123456789abcdef" in said[0]
    assert not (out / "encoder.onnx").exists() and (out / "encoder.onnx.stale-0123456789abcdef").is_file()
    assert (out / "encoder_validation.json.stale-0123456789abcdef").is_file()
    with gcomp.open_model(out) as model:  # not refused on another export's verdict
        assert not [n for n in model.notes if "validation" in n]


def test_bf16_of_a_narrow_model_is_validated_against_its_rounded_weights(tmp_path):
    """bf16 stores the weights rounded to 8 mantissa bits and computes in fp32. Against the trained model, that
    rounding alone moved a gf = df = 4 model's trajectory step by ~0.19-0.2 (it failed at 0.20008 > 0.2): the check
    measured the width, not the export. The reference now rounds as the file does, so the export is held to fp32's
    tolerances and the rounding's cost is reported as info."""
    from gcomp.export import validate

    cfg = ModelConfig(size=32, gf=4, df=4, zdim=16)
    torch.manual_seed(0)
    G, D = build(cfg)
    calibrate_batchnorm(torch, G, D, cfg)
    ck = checkpoint.save(tmp_path / "narrow.pt", cfg, G, D)
    report = export_model(ck, tmp_path / "bf16", precision="bf16")["validation"]
    rows = {r["name"]: r for r in report["checks"]}
    assert report["ok"] and "rounded to bf16" in report["reference"]
    for name, key in (("image", "image"), ("v_out", "v_out"), ("trajectory step", "trajectory_step")):
        assert rows[name]["tol"] == validate.TOLERANCES["fp32"][key] and rows[name]["max_rel"] <= rows[name]["tol"]
    # what the rounding costs this model: far above fp32's tolerance, hence the rounded reference
    assert rows["storage rounding: v_out (info)"]["tol"] is None
    assert rows["storage rounding: v_out (info)"]["max_rel"] > 1e-3 and rows["storage rounding: image (info)"]["max_rel"] > 1e-4


def test_storage_rounded_reference_folds_to_the_stored_weights(models):
    """The bf16 reference's folded weights are the bf16 values the export stores (to fp32 precision)."""
    from gcomp.export.validate import storage_rounded
    from gcomp.train.adjoint import _Folded

    G, D = models
    Gr, Dr = storage_rounded(G, D, "bf16")
    assert storage_rounded(G, D, "fp32") == (G, D) and storage_rounded(G, D, "fp16") == (G, D)
    stored = dict(_Folded(G, D, torch.float32, torch.bfloat16).named_buffers())
    ref = dict(_Folded(Gr, Dr, torch.float32, torch.float32).named_buffers())
    for name, t in stored.items():
        assert errors(ref[name].numpy(), t.float().numpy())[1] < 1e-6, name
    assert errors(G.fc.weight.detach().numpy(), Gr.fc.weight.detach().numpy())[1] > 1e-4  # a rounded copy, G untouched


def test_bad_checkpoints(tmp_path, ckpt):
    from typer.testing import CliRunner

    from gcomp.cli.app import app

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(ckpt).read_bytes()[:4000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    for bad in (truncated, foreign, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError):
            export_model(bad, tmp_path / "out")
        r = CliRunner().invoke(app, ["export", str(bad), "--out", str(tmp_path / "out")])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0], r.output


def test_bad_options(ckpt, tmp_path):
    from typer.testing import CliRunner

    from gcomp.cli.app import app

    for args, msg in ((["--precision", "fp8"], "precision must be one of"),
                      (["--batch", "0"], "batch must be 'dynamic' or a positive integer"),
                      (["--opset", "12"], "opset must be between")):
        r = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(tmp_path), *args])
        assert r.exit_code == 2 and msg in r.output, r.output


def test_trt_without_tensorrt_says_what_to_install(ckpt, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gcomp.cli.app import app

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    r = CliRunner().invoke(app, ["export", str(ckpt), "--out", str(tmp_path), "--trt"])
    assert r.exit_code == 2
    assert "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings" in r.output
    assert not (tmp_path / "step.onnx").exists()  # refused before exporting anything


# -- TensorRT engines -----------------------------------------------------------------------------------------
def test_engine_header_round_trip_and_checks(tmp_path):
    from gcomp.export.trt import (EngineMismatchError, check_engine_header, pack_engine, read_engine,
                                  read_engine_header)

    header = {"format": "gcomp-trt/1", "builder": "tensorrt", "tensorrt_version": "10.9.0",
              "compute_capability": ["8.6"], "precision": "fp16"}
    p = tmp_path / "step.engine"
    p.write_bytes(pack_engine(header, b"\x00plan"))
    assert p.read_bytes()[:8] == b"GCOMPTRT"
    assert read_engine_header(p) == header and read_engine(p) == (header, b"\x00plan")
    check_engine_header(header, "tensorrt", "10.9.0", (8, 6))
    with pytest.raises(EngineMismatchError, match="10.9.0.*10.11.0"):
        check_engine_header(header, "tensorrt", "10.11.0", (8, 6))
    with pytest.raises(EngineMismatchError, match="compute capability 8.6, this GPU is 9.0"):
        check_engine_header(header, "tensorrt", "10.9.0", (9, 0))
    with pytest.raises(EngineMismatchError, match="cannot be loaded by tensorrt_rtx"):
        check_engine_header(header, "tensorrt_rtx")
    plain = tmp_path / "plain.engine"
    plain.write_bytes(b"ftrt" + b"\x00" * 32)
    with pytest.raises(EngineMismatchError, match="not a gcomp TensorRT engine"):
        read_engine_header(plain)


RTX_MISSING = "TensorRT-RTX not installed (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)"


@pytest.fixture(scope="module")
def rtx_engines(fp32, tmp_path_factory):
    """generator.engine and step.engine built by TensorRT-RTX (it builds without a GPU)."""
    pytest.importorskip("tensorrt_rtx_bindings", reason=RTX_MISSING)
    from gcomp.export.trt import build_engine

    out = tmp_path_factory.mktemp("engines")
    headers = {}
    for name in ("generator", "step"):
        headers[name] = build_engine(fp32 / f"{name}.onnx", out / f"{name}.engine", "fp32", profile=(1, 4, 16),
                                     timing_cache=out / "timing.cache")
    return out, headers


@pytest.mark.trt
def test_trt_rtx_builds_a_real_engine(rtx_engines):
    import tensorrt_rtx_bindings as trt

    from gcomp.export.trt import EngineMismatchError, check_engine_header, read_engine, read_engine_header

    out, headers = rtx_engines
    for name, header in headers.items():
        assert read_engine_header(out / f"{name}.engine") == json.loads(json.dumps(header))
        _, plan = read_engine(out / f"{name}.engine")
        assert len(plan) > 10_000
    h = headers["step"]
    assert h["builder"] == "tensorrt_rtx" and h["tensorrt_version"] == trt.__version__
    assert h["metadata"]["gcomp_kind"] == "step" and h["metadata"]["config_hash"] == CFG.hash()
    assert h["shapes"]["z"] == {"min": [1, 16], "opt": [4, 16], "max": [16, 16]}
    assert h["shapes"]["w"] == {"min": [1, 1, 32, 32], "opt": [4, 1, 32, 32], "max": [16, 3, 32, 32]}
    assert h["shapes"]["lr"] == {"min": [], "opt": [], "max": []}
    assert h["outputs"] == ["z_out", "v_out", "loss"]
    assert headers["generator"]["outputs"] == ["image"]
    assert h["compute_capability"] and "9.0" not in h["compute_capability"]
    check_engine_header(h, "tensorrt_rtx", trt.__version__, h["compute_capability"][0])
    with pytest.raises(EngineMismatchError, match="this GPU is 9.0"):  # H100: not a TensorRT-RTX target
        check_engine_header(h, "tensorrt_rtx", trt.__version__, (9, 0))


@pytest.mark.trt
def test_trt_rtx_engine_deserializes(rtx_engines):
    from gcomp.export.trt import try_deserialize

    out, _ = rtx_engines
    ok, msg = try_deserialize(out / "step.engine")
    if not ok:
        pytest.skip(f"the TensorRT-RTX runtime cannot load engines here (it needs a GPU of compute "
                    f"capability 8.0-8.9 or 12.x and a CUDA 13 driver): {msg}")
