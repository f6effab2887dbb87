"""gcomp bench: the report's schema and statistics on a tiny model (no timing assertions)."""
import hashlib
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")

from gcomp.cli.app import app  # noqa: E402
from gcomp.benchmarks.bench import flops_per_iteration  # noqa: E402


def test_flops_of_the_seed_model():
    # G fwd + D fwd + both input-gradients of the 64x64, gf=df=64 DCGAN: ~1.30 GFLOP (DESIGN.md section 5)
    assert flops_per_iteration(64, 100, 64, 64) == pytest.approx(1.3009e9, rel=1e-4)


def test_step_stats_of_known_times():
    from gcomp.benchmarks.bench import step_stats

    s = step_stats(np.array([4.0, 1.0, 3.0, 2.0]))
    assert s == pytest.approx({"n": 4, "min": 1.0, "max": 4.0, "mean": 2.5, "median": 2.5, "p90": 3.7, "p95": 3.85,
                               "p99": 3.97, "stdev": float(np.sqrt(5 / 3))})  # sample stdev: sum of squares 5, n - 1
    assert step_stats(np.array([2.0]))["stdev"] == 0.0  # one call: no spread to estimate


def test_bench_cli_json(tiny_ckpt, tmp_path):
    from gcomp import __version__
    from gcomp.engine.cpu import cpu_flags, cpu_kind
    from gcomp.train.checkpoint import load_models, weights_id

    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", "--model", str(tiny_ckpt), "--backend", "torch,onnxruntime",
                                 "--iters", "4", "--warmup", "1", "--batch-size", "2,4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["machine"]["cores"] >= 1 and "numpy" in rep["machine"]["libraries"]
    assert rep["machine"]["cpu_kind"] == cpu_kind() and set(rep["machine"]["cpu_flags"]) <= cpu_flags()
    started = datetime.fromisoformat(rep["timestamp"])
    assert started.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - started) < timedelta(hours=1)
    assert rep["gcomp_version"] == __version__
    ckpt_sha = hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    wid = weights_id(*load_models(tiny_ckpt)[1:])
    assert rep["model"]["sha256"] == ckpt_sha and rep["model"]["weights_id"] == wid

    # the seed loop at each batch size, then each backend; every speed-up against the seed loop of its batch
    assert [(x["backend"], x["batch"]) for x in rep["runs"]] == [
        ("baseline", 2), ("baseline", 4), ("torch", 2), ("torch", 4), ("onnxruntime", 2), ("onnxruntime", 4)]
    base = {x["name"]: x for x in rep["runs"] if x["backend"] == "baseline"}
    for run in rep["runs"]:
        s, ms = run["stats"], run["stats"]["step_ms"]
        per_step = np.array(run["latencies_ms"]) / run["steps_per_call"]
        assert ms["n"] == len(run["latencies_ms"]) == 4
        assert 0 < ms["min"] <= ms["median"] <= ms["p90"] <= ms["p95"] <= ms["p99"] <= ms["max"]
        assert ms["min"] <= ms["mean"] <= ms["max"] and ms["max"] == pytest.approx(per_step.max())
        assert ms["stdev"] >= 0 and ms["stdev"] == pytest.approx(np.std(per_step, ddof=1))
        assert s["images_per_s"] == pytest.approx(run["batch"] / (ms["mean"] / 1e3 * 4))
        b = base[s["baseline"]["name"]]
        assert s["baseline"]["batch"] == b["batch"] == run["batch"]
        assert s["speedup_vs_baseline"] == pytest.approx(s["images_per_s"] / b["stats"]["images_per_s"])
        assert s["share_of_peak"] is None  # CPU peak unknown
        # as run: non-empty, the run's own batch and backend, the model the run loaded
        st = run["settings"]
        assert st["name"] == run["backend"] and st["batch"] == run["batch"] and st["device"] == "cpu"
        assert st["precision"] == "fp32" and st["steps_per_call"] == run["steps_per_call"]
        assert run["model"]["weights_id"] == wid
        if run["backend"] == "onnxruntime":
            assert set(run["model"]["sha256"]) == {"onnx-fp32/generator.onnx", "onnx-fp32/step.onnx"}
        else:
            assert run["model"]["sha256"] == {tiny_ckpt.name: ckpt_sha}
    assert "images/s" in r.stdout and "speed-up (same batch)" in r.stdout and wid in r.stdout


def test_settings_are_read_from_the_open_backend(tiny_ckpt, monkeypatch):
    """Each run's settings are what its open backend and runtime report (OpenVINO's compiled model: threads,
    streams, inference precision), not the options asked for."""
    import openvino as ov
    import torch

    import gcomp.benchmarks.bench as bench_mod

    reported, real = [], bench_mod.run_settings

    def spy(be, batch):
        facts = dict(be.settings())
        if be.name == "openvino":
            cm = be.step_reqs[0].get_compiled_model()
            facts |= {"threads": int(cm.get_property("INFERENCE_NUM_THREADS")),
                      "streams": int(cm.get_property("NUM_STREAMS")),
                      "precision": "bf16" if cm.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "fp32"}
        if be.name == "torch":
            facts["threads"] = torch.get_num_threads()
        if be.name == "onnxruntime":
            facts["precision"] = be.info.meta["precision"]  # the export's
        reported.append(facts | {"batch": batch})
        return real(be, batch)

    monkeypatch.setattr(bench_mod, "run_settings", spy)
    rep = bench_mod.bench(tiny_ckpt, ["onnxruntime", "openvino", "torch"], [2], iters=2, warmup=0,
                          precisions=("fp32", "bf16"), log=lambda m: None)
    runs = [r for r in rep["runs"] if r["backend"] != "baseline"]
    assert [(r["backend"], r["precision"]) for r in runs] == [
        (b, p) for b in ("onnxruntime", "openvino", "torch") for p in ("fp32", "bf16")]
    assert len(reported) == len(runs)  # one run opened at a time, in order (rounds 1)
    for run, facts in zip(runs, reported):
        assert run["settings"] == run["settings"] | facts, run["name"]  # every reported value, unchanged
    by = {(r["backend"], r["precision"]): r["settings"] for r in runs}
    assert by["onnxruntime", "bf16"]["compute_precision"] == "fp32"  # bf16-stored weights, fp32 arithmetic
    assert {"io_binding", "streams"} <= set(by["onnxruntime", "fp32"]) and "kernels" in by["torch", "fp32"]
    assert by["torch", "bf16"]["precision"] == "bf16" and isinstance(by["openvino", "fp32"]["threads"], int)


def test_thread_and_stream_sweep_marks_the_best(tiny_ckpt):
    from gcomp.benchmarks.bench import bench, settings_grid

    assert settings_grid("torch", (1, 2), (1, 2)) == [{}]  # the reference takes neither
    assert settings_grid("openvino", (1, 2), (None,)) == [{"threads": 1}, {"threads": 2}]
    rep = bench(tiny_ckpt, ["onnxruntime"], [2], iters=2, warmup=0, threads=(1, 2), streams=(1, 2), log=lambda m: None)
    runs = rep["runs"][1:]
    grid = [{"threads": t, "streams": s} for t in (1, 2) for s in (1, 2)]
    assert [r["sweep"] for r in runs] == grid
    assert [{k: r["settings"][k] for k in ("threads", "streams")} for r in runs] == grid  # as the backend ran them
    assert [r["name"] for r in runs][0] == "onnxruntime fp32 b2 t1 s1"
    fastest = max(runs, key=lambda r: r["stats"]["images_per_s"])["name"]
    assert rep["swept"] and rep["best"] == [fastest]


def test_interleaved_rounds_time_every_call(tiny_ckpt):
    from gcomp.benchmarks.bench import bench

    rep = bench(tiny_ckpt, ["onnxruntime", "torch"], [2], iters=5, warmup=1, rounds=2, log=lambda m: None)
    assert rep["rounds"] == 2 and [r["backend"] for r in rep["runs"]] == ["baseline", "onnxruntime", "torch"]
    assert all(len(r["latencies_ms"]) == r["stats"]["step_ms"]["n"] == 5 for r in rep["runs"])  # 2 + 3 calls


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


def test_the_end_to_end_benchmark_times_the_job_its_stages_telea_and_the_seed_loop(tmp_path):
    """benchmarks/e2e.py over a tiny folder (the small bundled model): every figure present and positive, the job's
    outputs all done, the ratios computed from figures of the same run."""
    pytest.importorskip("torch")
    import cv2

    from gcomp.benchmarks.e2e import STAGES, e2e, table

    rng = np.random.default_rng(0)
    for i in range(6):
        (tmp_path / "in" / str(i % 2)).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / str(i % 2) / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    r = e2e(tmp_path / "in", "small", "onnxruntime", iters=(0, 2), batch_size=4, io_threads=2, seed_steps=1,
            log=lambda m: None)
    assert r["images"] == 6 and [run["iters"] for run in r["runs"]] == [0, 2]
    for run in r["runs"]:
        assert run["done"] == 6 and run["failed"] == 0 and run["images_per_s"] > 0
        assert set(run["stages_s"]) == set(STAGES) and run["stages_sum_s"] > 0
    assert r["runs"][0]["stages_s"]["search"] == 0  # 0 iterations: no search step runs
    assert r["telea"] and all(v > 0 for v in r["telea"].values())
    seed = r["runs"][1]
    assert seed["speedup_vs_seed_loop"] == pytest.approx(seed["images_per_s"] / seed["seed_loop_images_per_s"])
    assert r["machine"]["cpu_kind"] in table(r) and "| 2 |" in table(r)
    import re  # the commit measured: a checkout's (named in the table too), or None for an installed copy

    assert r["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+changes)?", r["commit"]) and r["commit"][:12] in table(r)


def test_the_ring_stop_benchmark_holds_out_known_pixels_next_to_the_hole():
    from gcomp.benchmarks.ring_stop import ring_of
    from gcomp.engine.masks import make_mask

    known = make_mask("center", 16)  # hole rows/cols 4..11
    ring = ring_of(known, 2)
    assert ring[known < 0.5].sum() == 0  # only known pixels
    assert ring[2:14, 2:14].sum() == ring.sum() == 12 * 12 - 8 * 8  # a 2-pixel frame around the hole


def test_output_hashes_are_the_same_for_two_runs_and_name_what_differs(tmp_path):
    """benchmarks/output_hashes.py, the before/after check for changes that must keep outputs byte-identical."""
    from gcomp.benchmarks import output_hashes as oh

    a, b = tmp_path / "a", tmp_path / "b"
    res = oh.run(a, models=("small",))
    assert {"small-defaults", "small-search-settings", "small-arrays", "small-prepared"} <= set(res)
    assert len(res["small-defaults"]) == 11 and res["small-search-settings"]["blend"] == "poisson:1"
    # the bundled model's path is recorded relative to the package: another checkout of the same code compares equal
    assert res["small-search-settings"]["model"] == "<gcomp>/models/small"
    oh.run(b, models=("small",))
    assert oh.compare(a, b) == []
    changed = json.loads((b / "hashes.json").read_text())
    changed["small-arrays"][0] = "0" * 16
    (b / "hashes.json").write_text(json.dumps(changed))
    assert oh.compare(a, b) == ["small-arrays"]


@pytest.mark.slow
def test_the_sweep_runs_each_setting_as_a_pinned_job_beside_telea_on_the_same_cores(tmp_path):
    """benchmarks/e2e_sweep.py over a tiny folder: each setting a whole `gcomp complete` process on one core, every
    round, the medians and ratios from the figures of the run, the default setting marked."""
    import cv2

    from gcomp.benchmarks.e2e_sweep import sweep, table

    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    r = sweep(tmp_path / "in", "small", "onnxruntime", cores=(1,), batch_sizes=(2, 64), io_threads=(4,), rounds=2,
              log=lambda m: None)
    assert r["images"] == 3 and len(r["jobs"]) == 4 and len(r["telea"]) == 2
    assert all(j["done"] == 3 and j["failed"] == 0 and j["images_per_s"] > 0 and j["cores"] == 1 for j in r["jobs"])
    rows = {row["batch_size"]: row for row in r["table"]}
    assert rows[64]["default"] and not rows[2]["default"]  # CompleteOptions' batch 64 and 4 I/O threads
    for b, row in rows.items():
        runs = [j["images_per_s"] for j in r["jobs"] if j["batch_size"] == b]
        assert row["min"] == min(runs) and row["max"] == max(runs)
        assert row["vs_telea"] == pytest.approx(row["images_per_s"] / row["telea_images_per_s"])
    text = table(r)
    assert "`-b 64 --io-threads 4` (default)" in text and text.count("**") == 2  # the best setting per core count


def test_usable_cores_is_the_affinity_mask(monkeypatch):
    import os

    from gcomp.engine import cpu

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert cpu.usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert cpu.usable_cores() == 7


def test_the_sweep_records_a_failed_job_goes_on_and_writes_the_report_after_every_job(tmp_path, monkeypatch):
    import cv2

    from gcomp.benchmarks import e2e_sweep as sw

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((64, 64, 3), np.uint8))
    seen, written = [], []

    def job(s, cpus, *a):
        seen.append((s.batch_size, tuple(cpus)))
        if s.batch_size == 8:
            raise RuntimeError("gcomp complete ... failed (1): boom")
        return {"images_per_s": 10.0 * s.batch_size, "seconds": 1.0, "done": 1, "failed": 0, "process_wall_s": 2.0}

    monkeypatch.setattr(sw, "run_job", job)
    monkeypatch.setattr(sw, "run_telea", lambda cpus, *a: seen.append(("telea", tuple(cpus))) or 100.0)
    monkeypatch.setattr(sw, "write_report", lambda report, path, quiet=False: written.append(len(report["jobs"])))
    r = sw.sweep(tmp_path, "small", "onnxruntime", cores=(1,), batch_sizes=(4, 8), io_threads=(2,), rounds=2,
                 log=lambda m: None, json_path=str(tmp_path / "r.json"))
    # the second round starts one place further in the list [Telea, b 4, b 8]
    assert [b for b, _ in seen] == ["telea", 4, 8, 4, 8, "telea"]
    assert all(len(c) == 1 for _, c in seen)  # pinned to one CPU
    assert len(r["errors"]) == 2 and "boom" in r["errors"][0]["error"] and len(r["jobs"]) == 2
    assert [row["batch_size"] for row in r["table"]] == [4] and r["table"][0]["vs_telea"] == pytest.approx(0.4)
    assert written == [0, 1, 1, 2, 2, 2]  # after each Telea loop and each job, failed ones included
    assert "failed in round 0" in sw.table(r)
