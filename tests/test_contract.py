"""The export contract: the runtime refuses a failed validation and graphs (or an encoder) from different
checkpoints, each with one clear line; every exported file states its conventions and recommendations."""
import json
import shutil

import pytest
from typer.testing import CliRunner

from synth import make_faces
from gcomp.cli.app import app
from gcomp.engine.api import DEFAULT_MODEL, open_model
from gcomp.engine.backends import BackendError
from gcomp.export.metadata import CONVENTIONS, RECOMMENDED, read_metadata, write_metadata

runner = CliRunner()


@pytest.fixture
def bundled_copy(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    for f in DEFAULT_MODEL.glob("*.onnx"):
        shutil.copy(f, out / f.name)
    return out


def _one_line_refusal(src, out, model, needle, *extra):
    r = runner.invoke(app, ["complete", str(src), str(out), "--model", str(model), "--iters", "1", "--no-progress", *extra])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert not out.exists()
    return lines[0]


def test_a_failed_validation_is_refused_unless_allowed(bundled_copy, tmp_path):
    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    (bundled_copy / "validation.json").write_text(json.dumps({"ok": False, "checks": []}))
    line = _one_line_refusal(src, tmp_path / "out", bundled_copy, "failed its validation")
    assert "validation.json" in line and "--allow-unvalidated" in line
    r = runner.invoke(app, ["complete", str(src), str(tmp_path / "out"), "--model", str(bundled_copy), "--iters", "1",
                            "--no-progress", "--allow-unvalidated"])
    assert r.exit_code == 0 and "warning:" in r.stderr and "validation" in r.stderr, r.output
    with pytest.raises(BackendError, match="failed its validation"):
        open_model(bundled_copy)
    with open_model(bundled_copy, allow_unvalidated=True) as m:
        assert any(n.startswith("warning:") for n in m.notes)
    (bundled_copy / "validation.json").write_text(json.dumps({"ok": True}))  # an older gcomp's: it names no files
    with open_model(bundled_copy) as m:
        assert [n for n in m.notes if n.startswith("warning:") and "names no file hashes" in n]


def test_a_report_about_other_files_is_refused_unless_allowed(bundled_copy, tmp_path):
    """A report names the sha256 of each file it validated; one copied beside other files proves nothing about them."""
    from gcomp.engine.backends.exported import file_sha256

    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    ours = {n: file_sha256(bundled_copy / n) for n in ("generator.onnx", "step.onnx")}
    (bundled_copy / "validation.json").write_text(json.dumps({"ok": True, "weights_id": "0123456789abcdef",
                                                              "sha256": {**ours, "step.onnx": "0" * 64}}))
    line = _one_line_refusal(src, tmp_path / "out", bundled_copy, "this report is about other files")
    assert str(bundled_copy / "validation.json") in line and "step.onnx is not the file it validated" in line
    assert "weights id 0123456789abcdef in the report" in line and "--allow-unvalidated" in line
    r = runner.invoke(app, ["complete", str(src), str(tmp_path / "out"), "--model", str(bundled_copy), "--iters", "1",
                            "--no-progress", "--allow-unvalidated"])
    assert r.exit_code == 0 and "warning:" in r.stderr and "about other files" in r.stderr, r.output
    (bundled_copy / "validation.json").write_text(json.dumps({"ok": True, "sha256": ours}))  # theirs: accepted
    with open_model(bundled_copy) as m:
        assert not [n for n in m.notes if "validation" in n]


def test_graphs_or_an_encoder_from_another_checkpoint_are_refused(bundled_copy, tmp_path):
    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    wid = read_metadata(bundled_copy / "step.onnx")["weights_id"]
    assert wid and read_metadata(bundled_copy / "generator.onnx")["weights_id"] == wid
    assert read_metadata(bundled_copy / "encoder.onnx", require=False)["weights_id"] == wid
    write_metadata(bundled_copy / "encoder.onnx", {"weights_id": "0123456789abcdef"})
    _one_line_refusal(src, tmp_path / "out", bundled_copy, "another checkpoint")
    r = runner.invoke(app, ["complete", str(src), str(tmp_path / "out2"), "--model", str(bundled_copy), "--iters", "1",
                            "--no-progress", "--init", "random"])
    assert r.exit_code == 0, r.output  # without the encoder the graphs themselves are fine
    write_metadata(bundled_copy / "step.onnx", {"weights_id": "0123456789abcdef"})
    _one_line_refusal(src, tmp_path / "out3", bundled_copy, "different checkpoints")


def test_the_bundled_files_state_their_conventions():
    for name in ("generator", "step", "encoder"):
        meta = read_metadata(DEFAULT_MODEL / f"{name}.onnx")
        for key, value in CONVENTIONS.items():
            assert meta[key] == value, (name, key)
        for key in ("weights_id", "description", "license", "date", "defaults", "precision", "compute_precision",
                    "unroll", "batch", "opset"):
            assert key in meta, (name, key)
    assert read_metadata(DEFAULT_MODEL / "encoder.onnx")["precision"] == "bf16"  # as stored, like the graphs


@pytest.mark.slow
def test_a_fresh_export_carries_the_weights_id_and_the_recommended_settings(tiny_ckpt, tmp_path):
    pytest.importorskip("torch")
    from gcomp.export import export_model
    from gcomp.train.checkpoint import load_models, weights_id

    out = tmp_path / "export"
    export_model(tiny_ckpt, out, validate=False, recommend="iters=50,lr=1e-3", license="CC0")
    _, G, D = load_models(tiny_ckpt)
    for name in ("generator", "step"):
        meta = read_metadata(out / f"{name}.onnx")
        assert meta["weights_id"] == weights_id(G, D)
        assert meta["defaults"] == {**RECOMMENDED, "iters": 50, "lr": 1e-3}
        assert meta["license"] == "CC0" and meta["date"].endswith("Z") and "checkpoint.pt" in meta["description"]
        assert {k: meta[k] for k in CONVENTIONS} == CONVENTIONS
    with pytest.raises(ValueError, match="unknown setting"):
        export_model(tiny_ckpt, tmp_path / "bad", recommend="speed=11")
    assert not (tmp_path / "bad").exists()


def test_read_metadata_reads_every_graph_gcomp_writes_the_bundled_encoder_included():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "models" / "default"
    kinds = {f: read_metadata(root / f)["gcomp_kind"] for f in ("generator.onnx", "step.onnx", "encoder.onnx")}
    assert kinds == {"generator.onnx": "generator", "step.onnx": "step", "encoder.onnx": "encoder"}
