"""Both kinds of x86 CPU, by simulation: with native bf16 (AVX512_BF16 / AMX) and without (AVX2, AVX-512).

GCOMP_CPU_BF16=1 or 0 stands in for /proc/cpuinfo's flags (engine/backends/openvino_backend.py), so the
decisions that depend on the CPU (which backend `--backend auto` runs an ONNX export on, which precision
openvino's `--precision auto` asks for, what the notes say) are tested both ways on every machine. OpenVINO
itself still sees the real CPU: on one without bf16 it computes f32 whatever it is asked, so what ran is
checked against OpenVINO's own report, never assumed to be bf16.

The rest of the suite passes under either setting: `GCOMP_CPU_BF16=1 python -m pytest -q` runs it as a
bf16 CPU would, `GCOMP_CPU_BF16=0` as an AVX2 one.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gcomp.engine.backends import auto_backend, open_backend
from gcomp.engine.backends.openvino_backend import cpu_has_native_bf16, pick_precision

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
KINDS = pytest.mark.parametrize("bf16", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])


def simulate(monkeypatch, bf16: bool) -> None:
    monkeypatch.setenv("GCOMP_CPU_BF16", "1" if bf16 else "0")


def this_cpu_has_bf16_flags() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_the_variable_overrides_the_cpu_flags_and_only_them(monkeypatch):
    for value, expected in (("1", True), ("0", False), ("true", True), ("no", False), (" 1 ", True)):
        monkeypatch.setenv("GCOMP_CPU_BF16", value)
        assert cpu_has_native_bf16() is expected, value
    # given flags are parsed as given, whatever the variable says
    monkeypatch.setenv("GCOMP_CPU_BF16", "1")
    assert cpu_has_native_bf16("flags\t\t: fpu sse avx2\n") is False
    monkeypatch.setenv("GCOMP_CPU_BF16", "0")
    assert cpu_has_native_bf16("flags\t\t: fpu avx512f amx_bf16\n") is True
    # unset, empty or not a yes/no: this machine's own flags
    for value in (None, "", "maybe"):
        if value is None:
            monkeypatch.delenv("GCOMP_CPU_BF16", raising=False)
        else:
            monkeypatch.setenv("GCOMP_CPU_BF16", value)
        assert cpu_has_native_bf16() is this_cpu_has_bf16_flags(), value


@KINDS
def test_auto_backend_follows_the_cpu(bf16, monkeypatch, tmp_path):
    simulate(monkeypatch, bf16)
    export = tmp_path / "export"
    export.mkdir()
    (export / "step.onnx").write_bytes(b"")  # auto decides by the folder's files alone
    name, why = auto_backend(export, "cpu")
    if bf16 and HAS_OPENVINO:
        assert name == "openvino" and "with native bf16" in why
    elif bf16:
        assert name == "onnxruntime" and "not installed" in why
    else:
        assert name == "onnxruntime" and "without native bf16" in why
    # what the CPU has matters only for an ONNX export on the CPU
    assert auto_backend(export, "cuda")[0] == "onnxruntime"
    assert auto_backend(tmp_path / "model.pt", "cpu")[0] == "torch"
    assert auto_backend(tmp_path / "model.engine", "cpu")[0] == "tensorrt"


@KINDS
def test_openvino_auto_precision_follows_the_cpu(bf16, monkeypatch):
    simulate(monkeypatch, bf16)
    assert pick_precision("auto") == ("bf16" if bf16 else "fp32")
    assert pick_precision("fp32") == "fp32" and pick_precision("bf16") == "bf16"  # asked for: never changed



def openvino_computes_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@KINDS
def test_openvino_says_what_auto_chose_and_what_runs(bf16, monkeypatch, exported):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'gcomp[openvino]')")
    simulate(monkeypatch, bf16)
    with open_backend(exported, "openvino", threads=2) as vb:  # --precision auto
        notes, ran = list(vb.notes), vb.settings()["precision"]
        z = np.zeros((2, vb.info.zdim), np.float32)
        assert np.isfinite(vb.generate(z)).all()
    assert notes[0].startswith(f"openvino: inference precision {'bf16' if bf16 else 'fp32'} (--precision auto: ")
    assert ("no native bf16" in notes[0]) != bf16
    if bf16:
        # only a CPU that really computes bf16 runs it; elsewhere OpenVINO runs f32 and the backend says so
        real = openvino_computes_bf16()
        assert ran == ("bf16" if real else "fp32")
        assert len(notes) == (1 if real else 2)
        assert real or ("bf16 was asked for" in notes[1] and "computes in fp32" in notes[1])
    else:
        assert ran == "fp32" and len(notes) == 1


@KINDS
def test_cli_auto_runs_what_the_cpu_calls_for(bf16, monkeypatch, exported, tmp_path):
    """`gcomp complete` with an export and no --backend: the summary records the backend auto chose and the
    precision that ran; --precision is refused with auto's reason where auto chose onnxruntime."""
    from typer.testing import CliRunner

    from synth import make_faces
    from gcomp.cli.app import app

    simulate(monkeypatch, bf16)
    src = tmp_path / "in"
    make_faces(src, n=2)
    base = ["complete", str(src), str(tmp_path / "out"), "--model", str(exported), "--iters", "2", "--no-progress"]
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "out" / "gcomp-summary.json").read_text())
    openvino = bf16 and HAS_OPENVINO
    assert s["settings"]["backend"] == ("openvino" if openvino else "onnxruntime")
    assert ("note: --backend auto: openvino" in r.stderr) == openvino
    if openvino:
        assert s["settings"]["backend_settings"]["precision"] == ("bf16" if openvino_computes_bf16() else "fp32")
    r = CliRunner().invoke(app, base + ["--precision", "fp32", "--overwrite"])
    if openvino:
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 2
        assert "--precision does not apply to the onnxruntime backend (--backend auto chose onnxruntime" in r.stderr
