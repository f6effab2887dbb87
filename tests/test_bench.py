"""gcomp bench: the report's schema and statistics on a tiny model (no timing assertions)."""
import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from gcomp.cli.app import app  # noqa: E402
from gcomp.benchmarks.bench import flops_per_iteration  # noqa: E402


def test_flops_of_the_seed_model():
    # G fwd + D fwd + both input-gradients of the 64x64, gf=df=64 DCGAN: ~1.30 GFLOP (DESIGN.md section 5)
    assert flops_per_iteration(64, 100, 64, 64) == pytest.approx(1.3009e9, rel=1e-4)


def test_bench_cli_json(tiny_ckpt, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", "--model", str(tiny_ckpt), "--backend", "torch,onnxruntime",
                                 "--iters", "4", "--warmup", "1", "--batch-size", "2,4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["machine"]["cores"] >= 1 and "numpy" in rep["machine"]["libraries"]
    names = [x["backend"] for x in rep["runs"]]
    assert names == ["baseline", "torch", "torch", "onnxruntime", "onnxruntime"]
    base = rep["runs"][0]["stats"]["images_per_s"]
    for run in rep["runs"]:
        s, ms = run["stats"], run["stats"]["step_ms"]
        assert len(run["latencies_ms"]) == 4
        assert 0 < ms["min"] <= ms["median"] <= ms["p90"] <= ms["p95"] <= ms["p99"]
        assert ms["min"] <= ms["mean"]
        assert s["images_per_s"] == pytest.approx(run["batch"] / (ms["mean"] / 1e3 * 4))
        assert s["speedup_vs_baseline"] == pytest.approx(s["images_per_s"] / base)
        assert s["share_of_peak"] is None  # CPU peak unknown
    assert "images/s" in r.stdout and "speed-up" in r.stdout


def test_thread_and_stream_sweep_marks_the_best(tiny_ckpt):
    from gcomp.benchmarks.bench import bench, settings_grid

    assert settings_grid("torch", (1, 2), (1, 2)) == [{}]  # the reference takes neither
    assert settings_grid("openvino", (1, 2), (None,)) == [{"threads": 1}, {"threads": 2}]
    rep = bench(tiny_ckpt, ["onnxruntime"], [2], iters=2, warmup=0, threads=(1, 2), streams=(1, 2), log=lambda m: None)
    runs = rep["runs"][1:]
    assert [r["settings"] for r in runs] == [{"threads": t, "streams": s} for t in (1, 2) for s in (1, 2)]
    assert [r["name"] for r in runs][0] == "onnxruntime fp32 b2 t1 s1"
    fastest = max(runs, key=lambda r: r["stats"]["images_per_s"])["name"]
    assert rep["swept"] and rep["best"] == [fastest]


def test_interleaved_rounds_time_every_call(tiny_ckpt):
    from gcomp.benchmarks.bench import bench

    rep = bench(tiny_ckpt, ["onnxruntime", "torch"], [2], iters=5, warmup=1, rounds=2, log=lambda m: None)
    assert rep["rounds"] == 2 and [r["backend"] for r in rep["runs"]] == ["baseline", "onnxruntime", "torch"]
    assert all(len(r["latencies_ms"]) == 5 for r in rep["runs"])  # 2 + 3 calls over the two rounds


def _no_cuda():
    import torch

    return pytest.param(["--device", "cuda"], "--device cuda, but CUDA is not available",
                        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"))


@pytest.mark.parametrize("args, needle", [
    (["--iters", "0"], "--iters must be >= 1, got 0"),
    (["-b", "2,0"], "--batch-size must be >= 1, got 0"),
    (["-b", "abc"], "--batch-size takes comma-separated whole numbers (e.g. 1,16,64), got 'abc'"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--streams", "2,x"], "--streams takes comma-separated whole numbers"),
    (["--precision", "fp8"], "--precision fp8: the onnxruntime backend runs fp32, fp16, bf16"),
    (["--backend", "torch", "--precision", "fp16"], "--precision fp16: the torch backend runs fp32, tf32, bf16"),
    (["--rounds", "0"], "--rounds must be >= 1, got 0"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--backend", "auto"], "--backend 'auto': unknown backend"),
    (["--device", "gpu"], "--device 'gpu': unknown device"),
    _no_cuda(),
])
def test_a_bad_option_is_refused_before_any_work(args, needle, monkeypatch):
    """One line naming the option, exit 2, and neither the checkpoint, the export nor the seed loop started
    (they took ~30 s before the refusal)."""
    def work(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr("gcomp.train.checkpoint.save", work)
    monkeypatch.setattr("gcomp.train.checkpoint.load_models", work)
    r = CliRunner().invoke(app, ["bench", *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ") and needle in r.stderr
