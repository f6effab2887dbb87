"""benchmarks/gpu_check.sh --dry: the GPU proof script runs end to end on CPU with tiny sizes, so it cannot rot
between the rare sessions that have a GPU. Checks the report's sections and that its numbers are sane and
consistent; never how fast this machine is."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CODE = ROOT / "benchmarks" / "gpu"  # the script's modules: no package, they import each other as top-level modules


def _load_module():
    """The GPU check's modules, loaded afresh from their folder (they are not in the wheel, so not importable as
    gcomp.benchmarks.*), as attributes: gc.common, gc.report, gc.phase_profile, ... sys.path and sys.modules are
    left as they were, so generic names such as `common` or `report` do not leak into other tests."""
    import importlib
    from types import SimpleNamespace

    names = sorted(p.stem for p in CODE.glob("*.py"))
    saved_path, saved = list(sys.path), {n: sys.modules.pop(n) for n in names if n in sys.modules}
    sys.path.insert(0, str(CODE))
    try:
        return SimpleNamespace(**{n: importlib.import_module(n) for n in names})
    finally:
        sys.path[:] = saved_path
        for n in names:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def dry_report(tmp_path_factory):
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    out = tmp_path_factory.mktemp("gpu-check")
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(out)}
    # batch 2 only and 8 images end to end: every phase and every row kind, in under a minute on 2 cores
    r = subprocess.run(["bash", str(SCRIPT), "--dry", "--out", str(out), "--batches", "2", "--e2e-images", "8",
                        "--e2e-batches", "4"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out


@pytest.mark.slow
def test_dry_run_writes_every_section(dry_report):
    rep, out = dry_report
    assert rep["schema"] == "gcomp-gpu-check/1" and rep["dry"] is True and rep["device"] == "cpu"
    assert "CPU numbers" in rep["numbers_are"]  # never passed off as GPU figures
    for phase in ("machine", "bench", "profile", "e2e", "pytest"):
        assert rep["phases"][phase]["status"] == "ok", (phase, rep["phases"][phase])
    for name in ("gpu_check.json", "gpu_check.md", "gpu_check.log", "pytest_gpu.log", "profile-portable.txt",
                 "profile-tuned.txt", "e2e.log"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.iterdir())) <= 8  # the device tool brings back at most 8 files

    m = rep["machine"]
    assert m["cores"] >= 1 and m["torch"] and m["cpu"] and m["gpu"] is None
    roof = rep["roofline"]
    assert roof["tflops"]["bf16"] > 0 and roof["tflops"]["fp32"] > 0
    assert roof["bf16_roofline_images_per_s_1000"] == pytest.approx(
        roof["tflops"]["bf16"] * 1e12 / (roof["flops_per_image_iteration"] * 1000))

    seed = rep["seed_loop"]
    assert seed["status"] == "ok" and seed["batch"] == 4 and seed["ratio_vs_seed_loop"] == 1.0 and seed["finite"]
    assert seed["step_ms"] > 0
    assert seed["images_per_s_1000"] == pytest.approx(seed["batch"] / (seed["step_ms"] / 1e3 * 1000))
    assert seed["images_per_s_default"] == pytest.approx(10 * seed["images_per_s_1000"])

    rows = rep["rows"]
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    # every precision x CUDA-graph setting x batch has a row; tf32 is a CUDA mode, skipped with the reason
    assert {(r["precision"], r["cuda_graph"]) for r in torch_rows} == {(p, g) for p in ("bf16", "tf32", "fp32")
                                                                        for g in (True, False)}
    for r in torch_rows:
        if r["precision"] == "tf32":
            assert r["status"] == "skipped" and "CUDA" in r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["finite"] and r["settings"]["precision"] == r["precision"] and r["settings"]["fast"] is True
        assert r["step_ms"] > 0 and r["search_overhead_ms"] >= 0
        ips = r["images_per_s_1000"]
        assert ips == pytest.approx(r["batch"] / (r["step_ms"] / 1e3 * 1000))
        assert r["images_per_s_default"] == pytest.approx(10 * ips)
        assert r["images_per_s_1000_with_overhead"] <= ips * (1 + 1e-9)
        assert r["ratio_vs_seed_loop"] == pytest.approx(ips / seed["images_per_s_1000"])
        assert 0 < r["share_of_bf16_roofline"] and math.isfinite(r["share_of_bf16_roofline"])
    # bf16 + CUDA graph: each kernel choice at every batch, each lever alone at the largest; others portable
    from gcomp.engine.backends.torch_backend import parse_kernels

    kinds = {(r["kernels"], bool(r.get("lever"))) for r in torch_rows if r["precision"] == "bf16" and r["cuda_graph"]}
    assert kinds == {("portable", False), ("tuned", False), ("nhwc", True), ("nhwc,masks", True), ("pad8", True)}
    assert {r["kernels"] for r in torch_rows if not (r["precision"] == "bf16" and r["cuda_graph"])} == {"portable"}
    for r in torch_rows:
        if r["status"] == "ok":
            assert r["settings"]["kernels"] == (",".join(parse_kernels(r["kernels"])) or "portable")
    ref = [r for r in rows if r["backend"] == "torch-reference"]
    assert len(ref) == 1 and ref[0]["status"] == "ok" and ref[0]["settings"]["fast"] is False
    assert [r["status"] for r in rows if r["backend"] == "tensorrt"] == ["unavailable"]
    ort = [r for r in rows if r["backend"] == "onnxruntime"]
    assert ort and ort[0]["status"] == "unavailable" and ort[0]["reason"]
    assert rep["onnxruntime_cuda"]["available"] is False and rep["onnxruntime_cuda"]["reason"]

    assert [p["kernels"] for p in rep["profiles"]] == ["portable", "tuned"] and rep["profile"] == rep["profiles"][0]
    for p in rep["profiles"]:
        assert p["precision"] == "bf16" and p["kernel_ms_per_step"] > 0 and p["top"] and p["reading"]
        assert sum(g["share"] for g in p["groups"].values()) == pytest.approx(1.0)
        assert p["steps"] == 2 and p["file"] == f"profile-{p['kernels']}.txt"

    e = rep["e2e"]
    assert e["images"] == 8 and len(e["runs"]) == 1
    run = e["runs"][0]
    assert run["status"] == "ok" and run["exit_code"] == 0 and run["done"] == 8 and run["failed"] == 0
    assert run["written"] == 8 and run["images_per_s"] > 0 and run["backend_settings"]
    assert "--precision bf16" in run["command"] and "--backend torch" in run["command"]

    pt = rep["pytest"]
    assert pt["command"].startswith("pytest -m gpu") and not pt["timed_out"]
    assert pt["passed"] + pt["failed"] + pt["errors"] + pt["skipped"] == len(pt["tests"])
    if pt["exit_code"] == 0:  # on CPU every GPU test skips, each with its reason
        assert pt["passed"] == 0 and pt["skipped"] > 0 and all(s["reason"] for s in pt["skips"])
        assert pt["ok"]

    v = rep["verdict"]
    assert v["dry_run"] and v["done_when_met"] is None and v["best_bf16_cuda_graph"]["batch"] == 2
    md = (out / "gpu_check.md").read_text()
    for heading in ("## Machine", "## Phases", "## pytest -m gpu", "## Search step throughput",
                    "## ONNX Runtime CUDA", "## Profile", "## End to end", "## Verdict"):
        assert heading in md, heading
    assert "Dry run: CPU numbers" in md and "onnxruntime-gpu not available" in md


def test_flops_and_skip_classification():
    gc = _load_module()
    # G fwd + D fwd + both input-gradients of the seed's 64x64 gf=df=64 DCGAN: ~1.30 GFLOP (DESIGN.md 5)
    assert gc.phase_machine.flops_per_iteration(64, 100, 64, 64) == pytest.approx(1.3009e9, rel=1e-4)
    assert gc.phase_pytest.ALLOWED_SKIP.search("needs onnxruntime-gpu (this ONNX Runtime has no CUDA provider)")
    assert gc.phase_pytest.ALLOWED_SKIP.search("TensorRT execution needs a GPU runtime: no TensorRT: ...")
    assert not gc.phase_pytest.ALLOWED_SKIP.search("needs a CUDA GPU (torch.cuda.is_available() is False here)")


def test_verdict_applies_the_issue_bar():
    gc = _load_module()

    def rep(ips, ratio, ok=True):
        return {"dry": False, "pytest": {"ok": ok},
                "rows": [{"status": "ok", "backend": "torch", "precision": "bf16", "cuda_graph": True, "batch": 2048,
                          "images_per_s_1000": ips, "ratio_vs_seed_loop": ratio, "share_of_bf16_roofline": 0.5}]}

    assert gc.report.verdict(rep(310, 55))["done_when_met"] is True
    assert gc.report.verdict(rep(290, 55))["done_when_met"] is False
    assert gc.report.verdict(rep(310, 45))["done_when_met"] is False
    assert gc.report.verdict(rep(310, 55, ok=False))["done_when_met"] is False
    assert gc.report.verdict({"dry": False, "rows": []})["done_when_met"] is False


def test_ort_wheel_parts_are_joined(tmp_path):
    """--ort-wheel-dir: split parts are concatenated in name order into the wheel pip gets; without wheels the
    reason is recorded (pip itself is not run here: nothing to install)."""
    gc = _load_module()
    empty = tmp_path / "empty"
    empty.mkdir()
    info = gc.ort_wheels.install_ort_wheels(str(empty), tmp_path, {"PYTHONPATH": ""}, lambda m: None)
    assert not info["installed"] and "no wheel" in info["reason"]
    parts = tmp_path / "parts"
    parts.mkdir()
    for suffix, data in (("ab", b"world"), ("aa", b"hello ")):
        (parts / f"x-1.0-py3-none-any.whl.part-{suffix}").write_bytes(data)
    calls = []
    gc.ort_wheels.run_logged = lambda cmd, timeout, env, cwd=None: calls.append(cmd) or {"exit_code": 1, "output": "no"}
    info = gc.ort_wheels.install_ort_wheels(str(parts), tmp_path, {"PYTHONPATH": ""}, lambda m: None)
    assert (tmp_path / "wheels" / "x-1.0-py3-none-any.whl").read_bytes() == b"hello world"
    assert info["wheels"] == ["x-1.0-py3-none-any.whl"] and "--no-index" in calls[0] and not info["installed"]


def test_kernel_times_reads_gpu_events_as_a_cuda_profile_gives_them():
    """The CUDA branch of the profile, fed events shaped like torch.profiler's on a GPU: kernels by their own
    device time (either attribute name), CPU-side ops left out; then as a profiler without device types."""
    from types import SimpleNamespace as E

    kernel_times = _load_module().phase_profile.kernel_times

    class DT:
        CUDA, CPU = "cuda", "cpu"

    events = [E(key="aten::conv2d", device_type=DT.CPU, self_cpu_time_total=50.0, self_device_time_total=0.0, count=2),
              E(key="sm90_xmma_fprop", device_type=DT.CUDA, self_cpu_time_total=0.0, self_device_time_total=300.0,
                count=2),
              E(key="nchwToNhwcKernel", device_type=DT.CUDA, self_cpu_time_total=0.0, self_cuda_time_total=120.0,
                count=4)]
    timed, basis = kernel_times(events, on_cuda=True, device_type=DT)
    assert basis == "GPU kernel time"
    assert timed == [("sm90_xmma_fprop", 300.0, 2), ("nchwToNhwcKernel", 120.0, 4)]
    assert kernel_times(events, True, None)[0] == timed  # no device types: any event with device time
    cpu, basis = kernel_times(events, on_cuda=False)
    assert cpu == [("aten::conv2d", 50.0, 2)] and "CPU" in basis
