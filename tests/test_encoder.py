"""The encoder start: training against a frozen G, export, and `gcomp complete --init`."""
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from synth import make_faces  # noqa: E402
from gcomp.cli.app import app  # noqa: E402
from gcomp.engine.backends import open_backend  # noqa: E402
from gcomp.engine.search import SearchParams  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def with_encoder(tiny_ckpt, tmp_path_factory):
    from gcomp.export import export_model

    root = tmp_path_factory.mktemp("enc")
    faces = make_faces(root / "faces", n=16)
    out = root / "export"
    export_model(tiny_ckpt, out, validate=False)
    r = runner.invoke(app, ["train-encoder", str(tiny_ckpt), str(faces[0].parent), "--out", str(out),
                            "--steps", "30", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    assert "encoder validation vs PyTorch (fp32)" in r.stdout and "encoder validation passed" in r.stdout  # the table
    return out, faces


def test_encoder_learns_and_exports(with_encoder):
    out, _ = with_encoder
    log = [json.loads(line) for line in (out / "encoder_log.jsonl").read_text().splitlines()]
    assert len(log) == 30
    assert np.mean([r["known"] for r in log[-5:]]) < np.mean([r["known"] for r in log[:5]])
    assert (out / "encoder.onnx").is_file()


def test_encoder_is_exported_like_the_graphs_and_validated(with_encoder):
    """torch.onnx's dynamo exporter at the step graph's opset (not TorchScript at 17), a 'batch' axis, documented
    inputs and output, and a validation report against the PyTorch encoder that names the file's sha256."""
    import onnx

    from gcomp.engine.backends.exported import file_sha256
    from gcomp.export.metadata import read_metadata

    out, _ = with_encoder
    enc, step = onnx.load(str(out / "encoder.onnx")), onnx.load(str(out / "step.onnx"))
    opset = lambda m: [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")]  # noqa: E731
    assert opset(enc) == opset(step) == [18] and enc.ir_version == step.ir_version
    meta = read_metadata(enc)
    assert meta["opset"] == 18 and meta["exporter"].startswith("torch.onnx dynamo")
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    assert [(vi.name, dims(vi)) for vi in enc.graph.input] == [("image", ["batch", 3, 32, 32]), ("mask", ["batch", 1, 32, 32])]
    assert [(vi.name, dims(vi)) for vi in enc.graph.output] == [("z", ["batch", 16])]
    docs = {vi.name: vi.doc_string for vi in list(enc.graph.input) + list(enc.graph.output)}
    assert "uint8 / 127.5 - 1" in docs["image"] and "1 = known pixel, 0 = hole" in docs["mask"]
    assert "iters 0" in docs["z"] and "the encoder's latent, then the blend" in docs["z"]
    report = json.loads((out / "encoder_validation.json").read_text())
    assert report["ok"] and report["sha256"] == {"encoder.onnx": file_sha256(out / "encoder.onnx")}
    assert report["weights_id"] == meta["weights_id"] and report["encoder_weights_id"] == meta["encoder_weights_id"]
    (row,) = report["checks"]
    assert row["name"] == "z" and row["tol"] == 1e-4 and row["max_rel"] <= 1e-4


def test_a_reexport_of_the_same_checkpoint_keeps_its_encoder(with_encoder, tiny_ckpt, tmp_path):
    """Only an encoder of another checkpoint is moved aside (test_export); this one was trained for these weights."""
    import shutil

    from gcomp.export import export_model

    out, _ = with_encoder
    again = tmp_path / "again"
    shutil.copytree(out, again)
    said = []
    export_model(tiny_ckpt, again, precision="fp16", validate=False, log=said.append)
    assert (again / "encoder.onnx").read_bytes() == (out / "encoder.onnx").read_bytes()
    assert (again / "encoder_validation.json").is_file() and not [m for m in said if "encoder" in m]


def test_complete_starts_from_the_encoder(with_encoder, tmp_path):
    out, faces = with_encoder
    src = faces[0].parent
    runs = {}
    for init in ("encoder", "random"):
        r = runner.invoke(app, ["complete", str(src), str(tmp_path / init), "--model", str(out), "--init", init,
                                "--iters", "0", "--no-progress"])
        assert r.exit_code == 0, r.output
        runs[init] = json.loads((tmp_path / init / "gcomp-summary.json").read_text())["settings"]["encoder"]
    assert runs["encoder"].endswith("encoder.onnx") and runs["random"] is None
    a = (tmp_path / "encoder" / faces[0].name).read_bytes()
    assert a != (tmp_path / "random" / faces[0].name).read_bytes()


def test_encoder_of_another_generator_is_refused(with_encoder, tmp_path):
    import shutil

    from gcomp.train import checkpoint
    from gcomp.train.model import ModelConfig, build

    out, faces = with_encoder
    cfg = ModelConfig(size=32, zdim=16, gf=4, df=4)
    other = checkpoint.save(tmp_path / "o.pt", cfg, *build(cfg))
    from gcomp.export import export_model

    export_model(other, tmp_path / "e", validate=False)
    shutil.copy(out / "encoder.onnx", tmp_path / "e" / "encoder.onnx")
    r = runner.invoke(app, ["complete", str(faces[0]), str(tmp_path / "x"), "--model", str(tmp_path / "e"), "--iters", "1"])
    assert r.exit_code == 2 and "another generator" in r.stderr
    r = runner.invoke(app, ["complete", str(faces[0]), str(tmp_path / "y"), "--model", str(other), "--init", "encoder"])
    assert r.exit_code == 2 and "no encoder.onnx" in r.stderr


def test_early_stopping_is_per_image_and_backend_independent(tiny_ckpt, with_encoder):
    from gcomp.engine.backends.base import Backend

    out, _ = with_encoder
    rng = np.random.default_rng(0)
    hp = SearchParams(iters=60, lr=0.01, patience=3).resolved()
    with open_backend(tiny_ckpt, "torch") as tb, open_backend(out, "onnxruntime") as ob:
        s = tb.info.size
        z0 = rng.uniform(-1, 1, (3, tb.info.zdim)).astype(np.float32)
        y = rng.uniform(-1, 1, (3, 3, s, s)).astype(np.float32)
        w = np.ones((3, 1, s, s), np.float32)
        a, b = tb.search(z0, y, w, hp), Backend.host_search(tb, z0, y, w, hp)
        assert len(a.history) < 60 and len(a.history) == len(b.history)  # stopped early, at the same step
        np.testing.assert_allclose(a.z, b.z, atol=1e-4)
        c = ob.search(z0, y, w, hp)
        assert len(c.history) == len(a.history)


def test_encoder_metadata_states_storage_weights_and_settings(with_encoder, tiny_ckpt, tmp_path):
    """The encoder pairs with its generator's checkpoint (weights_id), says how its weights are stored (bf16: bf16
    initializers, not fp16), and carries the same conventions and recommended settings as the graphs beside it."""
    import onnx

    from gcomp.export.encoder import export_encoder
    from gcomp.export.metadata import CONVENTIONS, read_metadata
    from gcomp.train.checkpoint import load_models, weights_id

    out, _ = with_encoder
    _, G, D = load_models(tiny_ckpt)
    step = read_metadata(out / "step.onnx")
    meta = read_metadata(out / "encoder.onnx", require=False)
    assert meta["weights_id"] == step["weights_id"] == weights_id(G, D)
    assert meta["defaults"] == step["defaults"] and {k: meta[k] for k in CONVENTIONS} == CONVENTIONS
    assert (meta["precision"], meta["compute_precision"], meta["unroll"], meta["batch"]) == ("fp32", "fp32", 1, "dynamic")
    path = export_encoder(out / "encoder.pt", tmp_path, "bf16")
    types = {t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert onnx.TensorProto.BFLOAT16 in types and onnx.TensorProto.FLOAT16 not in types
    assert read_metadata(path, require=False)["precision"] == "bf16"
    # validated against the encoder as stored (bf16-rounded weights, fp32 compute); the rounding's cost as info
    report = json.loads((tmp_path / "encoder_validation.json").read_text())
    rows = {r["name"]: r for r in report["checks"]}
    assert report["ok"] and report["precision"] == "bf16" and rows["z"]["max_rel"] <= rows["z"]["tol"] == 1e-4
    assert rows["storage rounding: z (info)"]["tol"] is None and rows["storage rounding: z (info)"]["max_rel"] > 0
    from gcomp.engine.backends.base import ModelInfo
    from gcomp.engine.encoder import Encoder

    info = ModelInfo(size=32, zdim=16, config_hash=step["config_hash"], meta={"weights_id": step["weights_id"]})
    y = np.zeros((2, 3, 32, 32), np.float32)
    k = np.ones((2, 1, 32, 32), np.float32)
    z16 = Encoder(path, info)(y, k)
    z32 = Encoder(out / "encoder.onnx", info)(y, k)
    assert np.abs(z16 - z32).max() < 5e-2  # bf16 storage (8-bit mantissa), fp32 compute


def test_an_encoder_report_about_another_encoder_is_refused(with_encoder, tmp_path):
    """encoder_validation.json names encoder.onnx's sha256: a report copied from another encoder (here the bf16
    export of the same encoder.pt) beside it is refused, with one line naming the report."""
    import shutil

    from gcomp.engine.backends import BackendError
    from gcomp.engine.api import open_model
    from gcomp.export.encoder import export_encoder

    out, _ = with_encoder
    model = tmp_path / "model"
    shutil.copytree(out, model)
    other = export_encoder(out / "encoder.pt", tmp_path / "bf16", "bf16")
    shutil.copy(other.parent / "encoder_validation.json", model / "encoder_validation.json")
    with pytest.raises(BackendError) as e:
        open_model(model)
    line = str(e.value)
    assert line.startswith(str(model / "encoder_validation.json")) and "encoder.onnx is not the file it validated" in line
    assert "\n" not in line


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _refused(r, message):
    """Exit code 2 and one `error:` line naming the problem, before any training (which logs to stderr)."""
    lines = r.stderr.splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.output


@pytest.mark.parametrize("args, message", [
    (["-b", "0"], "--batch-size must be at least 1, got 0"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--lr", "0"], "--lr must be positive and finite, got 0.0"),
    (["--lr", "nan"], "--lr must be positive and finite, got nan"),
    (["--lr", "inf"], "--lr must be positive and finite, got inf"),
    (["--seed", "-1"], "--seed must be in [0, 2^64), got -1"),
    (["--device", "foo"], "--device must be one of auto, cpu, cuda, got 'foo'"),
    (["--device", "cuda"], "--device cuda, but CUDA is not available"),
    (["--precision", "fp8"], "--precision must be one of fp32, fp16, bf16, got 'fp8'"),
])
def test_bad_options_are_refused_before_training(with_encoder, tiny_ckpt, monkeypatch, args, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a CUDA machine
    out, faces = with_encoder
    before = _files(out)
    r = runner.invoke(app, ["train-encoder", str(tiny_ckpt), str(faces[0].parent), "--out", str(out),
                            "--steps", "2", "-b", "8", *args])
    _refused(r, message)
    assert _files(out) == before  # encoder.onnx, encoder.pt and the log untouched


def test_export_of_another_checkpoint_or_none_is_refused(with_encoder, tmp_path):
    """The encoder goes beside the graphs of its own checkpoint: another checkpoint's export keeps its encoder,
    and a folder without an export gets nothing."""
    from gcomp.export.metadata import read_metadata
    from gcomp.train import checkpoint
    from gcomp.train.model import ModelConfig, build

    out, faces = with_encoder
    cfg = ModelConfig(size=32, zdim=16, gf=8, df=8)
    other = checkpoint.save(tmp_path / "o.pt", cfg, *build(cfg))  # tiny_ckpt's architecture, other weights
    theirs = read_metadata(out / "step.onnx")["weights_id"]
    _, G, D = checkpoint.load_models(other)
    before = _files(out)
    train = ["train-encoder", str(other), str(faces[0].parent), "--steps", "2", "-b", "8", "--out"]
    r = runner.invoke(app, [*train, str(out)])
    _refused(r, f"{out}: its graphs come from another checkpoint (weights id {theirs}; this checkpoint's is "
                f"{checkpoint.weights_id(G, D)})")
    assert _files(out) == before
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, [*train, str(tmp_path / "empty")])
    _refused(r, "missing generator.onnx, step.onnx")
    assert not any((tmp_path / "empty").iterdir())
    r = runner.invoke(app, [*train, str(tmp_path / "nowhere")])
    _refused(r, f"--out {tmp_path / 'nowhere'} does not exist")
    assert not (tmp_path / "nowhere").exists()
    # the Python export refuses the same pairing, before it writes anything
    import shutil

    from gcomp.export.encoder import export_encoder
    from gcomp.export.metadata import write_metadata

    alien = tmp_path / "alien"
    shutil.copytree(out, alien)
    write_metadata(alien / "step.onnx", {"weights_id": "0123456789abcdef"})
    before = _files(alien)
    with pytest.raises(ValueError, match="weights id 0123456789abcdef; this encoder was trained for"):
        export_encoder(out / "encoder.pt", alien)
    assert _files(alien) == before


def test_a_failed_encoder_validation_prints_the_table_and_the_digits_that_decide(with_encoder, tiny_ckpt, monkeypatch,
                                                                                   tmp_path):
    """As gcomp export's: the table of checks (FAIL row), then one `error:` line with the numbers, exit 1 (it once
    exited 2 with the line alone)."""
    import shutil

    from gcomp.export import validate

    out, faces = with_encoder
    again = tmp_path / "again"
    shutil.copytree(out, again)
    monkeypatch.setitem(validate.TOLERANCES, "fp32", {k: 1e-12 for k in validate.TOLERANCES["fp32"]})
    r = runner.invoke(app, ["train-encoder", str(tiny_ckpt), str(faces[0].parent), "--out", str(again),
                            "--steps", "2", "-b", "8"])
    assert r.exit_code == 1, r.output
    assert "encoder validation vs PyTorch (fp32)" in r.stdout and "FAIL" in r.stdout and "1e-12" in r.stdout
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert re.fullmatch(r"error: encoder validation failed \(fp32\): z: relative error [0-9.e+-]+ > tolerance 1e-12 "
                        r"\(max abs [0-9.e+-]+\)", line), line
    assert not json.loads((again / "encoder_validation.json").read_text())["ok"]  # kept for debugging, refused later


def test_the_table_shows_the_digits_that_decide():
    """0.20008 against a tolerance of 0.2 once printed as 0.2 on both sides of a FAIL."""
    from gcomp.export.validate import decisive, format_table

    assert decisive(0.20008, 0.2) == "0.2001" and decisive(0.19996, 0.2) == "0.19996"
    assert decisive(0.2, 0.2) == "0.2" and decisive(1.234e-5, 1e-4) == "1.23e-05"
    assert decisive(0.123456, None) == "0.123"
    row = {"name": "z", "max_abs": 0.3, "max_rel": 0.20008, "tol": 0.2, "ok": False}
    assert format_table({"checks": [row]}) == [("z", "0.3", "0.2001", "2e-01", "FAIL")]
