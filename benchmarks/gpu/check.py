"""GPU proof (issue 17): one prepared run of every GPU path, with the figures written as JSON and Markdown.

    bash benchmarks/gpu_check.sh                       # on an H100 / H200: results in $OUT (~5-8 minutes)
    bash benchmarks/gpu_check.sh --dry --out /tmp/gc   # the same script on CPU with tiny sizes (CI: ~40 s)
    python benchmarks/gpu/check.py --help

Phases, each in its own time-boxed subprocess (a CUDA error or a hang in one is recorded and the next runs):

1. machine   GPU (nvidia-smi), driver, torch / CUDA / cuDNN, CPU, libraries; the measured dense matmul
             peak in bf16, tf32 and fp32, and from it the bf16 roofline of this model in images/s.
2. bench     the seed-faithful loop (the reference module's autograd gradient, copied to the host, the
             momentum update in numpy, z fed back: the seed's sess.run loop) at batch 64; the autograd
             reference with the update on the device; the torch fast path in fp32 / tf32 / bf16, with and
             without CUDA graphs, at each batch; bf16 with CUDA graphs also with the tuned kernels (channels-
             last, the image padded to 8 channels, fused activation backwards; train/adjoint.py), and each
             lever alone plus torch.compile at the largest batch; ONNX Runtime CUDA if onnxruntime-gpu is
             importable.
             Per-step time is the difference of two timed searches (long - short) / (steps difference),
             so the per-search fixed cost (host-to-device copies, the final loss) is reported apart.
3. profile   torch.profiler over a few eager bf16 steps at the largest batch, with the portable and with the
             tuned kernels: kernels by GPU time, grouped
             (convolution / GEMM, elementwise, reductions, copies), the GPU's busy share of a CUDA-graph
             step, and the convolutions' achieved FLOP/s: what bounds the bf16 path.
4. e2e       `python -m gcomp complete` on a few thousand synthetic faces (PNG), torch backend, bf16, the
             model's default 100 iterations: images/s including decode and write (gcomp-summary.json).
5. pytest    `pytest -m gpu`: every GPU test, each skip classified (a missing package such as TensorRT or
             onnxruntime-gpu is allowed; anything else, e.g. "no CUDA GPU", is not). Last: it gets the time left.

Results: OUT/gpu_check.json, OUT/gpu_check.md, OUT/gpu_check.log (each phase's output), OUT/pytest_gpu.log,
OUT/profile-<kernels>.txt, OUT/e2e.log. The JSON is rewritten after every phase, so a run cut short keeps what finished.

Models: the seed's DCGAN (64x64, gf = df = 64, z 100; --dry: 32x32, gf = df = 8, z 16) with random weights
and BatchNorm statistics calibrated by a few forward passes (timings do not depend on the weights).
Depends only on torch, gcomp.train (model, checkpoint, and reference: the autograd oracle, formerly
gcomp.engine.reference), gcomp.engine.backends.open_backend, gcomp.engine.search.SearchParams and the
`gcomp` CLI (run as `python -m gcomp`), so that refactors elsewhere break it as little as possible.

Code (a source checkout's, not the wheel's: benchmarks/gpu/ is no package): check.py (this: the options, the
orchestrator), common.py (helpers, the configuration, the model and inputs), ort_wheels.py, one phase_*.py per
phase, report.py (the verdict and the Markdown). They import each other as top-level modules: this folder is
sys.path[0] when check.py runs, as it does again for each phase.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded other than as the script (a test): its modules
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (PHASES, ROOT, SCHEMA, build_config, import_path_env, now_iso, run_logged,  # noqa: E402
                    tail, write_json)
from ort_wheels import install_ort_wheels  # noqa: E402
from phase_bench import phase_bench  # noqa: E402
from phase_e2e import phase_e2e  # noqa: E402
from phase_machine import phase_machine  # noqa: E402
from phase_profile import phase_profile  # noqa: E402
from phase_pytest import phase_pytest  # noqa: E402
from report import markdown, verdict  # noqa: E402


# -- the orchestrator ---------------------------------------------------------------------------------------
def orchestrate(a: argparse.Namespace) -> int:
    t_start = time.monotonic()
    cfg = build_config(a)
    out = Path(a.out or os.environ.get("OUT") or (ROOT / "gpu_check_out")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gcomp-gpu-check-"))
    cfg["work"], cfg["out"] = str(work), str(out)
    env = import_path_env()
    if cfg["dry"] and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = "1"  # a dry run times nothing that matters; one thread is robust on a busy CPU
    log_path = out / "gpu_check.log"
    log_f = log_path.open("w")

    def log(msg: str) -> None:
        line = f"[{time.monotonic() - t_start:6.1f}s] {msg}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    report = {"schema": SCHEMA, "dry": cfg["dry"], "device": cfg["device"], "started": now_iso(),
              "numbers_are": ("CPU numbers from a dry run with a tiny model: they test the script, not a GPU"
                              if cfg["dry"] else f"measured on {cfg['device']}"),
              "config": {k: v for k, v in cfg.items() if k not in ("work", "out")},
              "commit": _git_commit(), "phases": {}, "files": {}}
    log(f"gcomp GPU check ({'dry run on ' + cfg['device'] if cfg['dry'] else cfg['device']}); work dir {work}; "
        f"results in {out}")

    # onnxruntime-gpu, when a wheel (whole or split into *.part-aa, -ab, ...) was copied along
    report["onnxruntime_gpu_install"] = install_ort_wheels(a.ort_wheel_dir, work, env, log) if a.ort_wheel_dir \
        else {"installed": False, "reason": "no --ort-wheel-dir given: no onnxruntime-gpu wheel was copied here"}

    cfg_path = work / "config.json"
    write_json(cfg_path, cfg)
    deadline = t_start + cfg["budget_s"]
    for phase in PHASES:
        if phase not in cfg["phases"]:
            report["phases"][phase] = {"status": "skipped", "reason": "--skip"}
            continue
        left = deadline - time.monotonic()
        if left < 10:
            report["phases"][phase] = {"status": "skipped", "reason": f"--budget-s {cfg['budget_s']} spent"}
            log(f"{phase}: skipped, the budget is spent")
            continue
        box = min(cfg["boxes"][phase], left)
        cfg["phase_deadline"] = time.time() + box - 5  # phases stop starting new work 5 s before the box ends
        write_json(cfg_path, cfg)
        log(f"{phase}: start (time box {box:.0f} s)")
        r = run_logged([sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--config", str(cfg_path)],
                       box, env, cwd=ROOT)
        log_f.write(f"----- {phase} output -----\n{tail(r['output'])}\n----- end {phase} -----\n")
        result_path = work / f"phase-{phase}.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        status = ("timeout" if r["timed_out"] else "ok" if r["exit_code"] == 0 else "failed")
        error = result.pop("_error", None)
        if status == "failed" and not error:
            error = tail(r["output"], 15)
        report["phases"][phase] = {"status": status, "seconds": round(r["seconds"], 2), "exit_code": r["exit_code"],
                                   **({"error": error} if error else {})}
        report.update(result)
        log(f"{phase}: {status} in {r['seconds']:.1f} s" + (f": {str(error).splitlines()[-1]}" if error else ""))
        report["verdict"] = verdict(report)
        report["wall_s"] = round(time.monotonic() - t_start, 1)
        write_json(out / "gpu_check.json", report)
        (out / "gpu_check.md").write_text(markdown(report))
    report["finished"] = now_iso()
    report["wall_s"] = round(time.monotonic() - t_start, 1)
    report["verdict"] = verdict(report)
    report["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    write_json(out / "gpu_check.json", report)
    (out / "gpu_check.md").write_text(markdown(report))
    log(f"done in {report['wall_s']} s: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    log_f.close()
    if not a.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(markdown(report))
    return 0


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except Exception:
        return None


# -- entry point --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="CPU, tiny model and sizes: checks the script itself (CI)")
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else ./gpu_check_out)")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (--dry's default)")
    ap.add_argument("--batches", default=None, help="torch fast-path batch sizes (default 64,256,1024,2048)")
    ap.add_argument("--precisions", default=None, help="torch precisions, in order (default bf16,tf32,fp32)")
    ap.add_argument("--graphs", default=None, help="CUDA graph settings to time: on,off (default both)")
    ap.add_argument("--kernels", default=None, help="torch kernel choices timed for bf16 + CUDA graph at every batch, "
                    "';' between them (portable;tuned)")
    ap.add_argument("--levers", default=None, help="kernel choices timed at the largest batch, ';' between them "
                    "(nhwc;nhwc,masks;nhwc,pad8,masks,compile)")
    ap.add_argument("--profile-kernels", default=None, help="kernel choices profiled, ';' between them (portable;tuned)")
    ap.add_argument("--warmup", type=int, default=None, help="steps of the untimed warm-up search (3)")
    ap.add_argument("--iters-short", type=int, default=None, help="steps of the short timed search (10)")
    ap.add_argument("--iters-long", type=int, default=None, help="steps of the long timed search (60)")
    ap.add_argument("--seed-batch", type=int, default=None, help="the seed loop's batch (64)")
    ap.add_argument("--seed-iters", type=int, default=None, help="timed iterations of the seed loop (50)")
    ap.add_argument("--full-iters", type=int, default=1000, help="iterations per image for images/s (the seed's 1000)")
    ap.add_argument("--default-iters", type=int, default=100, help="the default model's iterations (100)")
    ap.add_argument("--matmul-n", type=int, default=None, help="matmul size for the measured peaks (8192)")
    ap.add_argument("--profile-batch", type=int, default=None, help="batch for the profile (the largest)")
    ap.add_argument("--profile-steps", type=int, default=None, help="profiled steps (5)")
    ap.add_argument("--e2e-images", type=int, default=None, help="synthetic faces for gcomp complete (3000)")
    ap.add_argument("--e2e-batches", default=None, help="gcomp complete --batch-size values (64,1024)")
    ap.add_argument("--e2e-io-threads", default=None, help="gcomp complete --io-threads values (4,16)")
    ap.add_argument("--e2e-iters", type=int, default=None, help="gcomp complete --iters (the default model's 100)")
    ap.add_argument("--e2e-precision", default="bf16", help="gcomp complete --precision (bf16)")
    ap.add_argument("--e2e-extra", default="", help="more gcomp complete options, one string")
    ap.add_argument("--ort-wheel-dir", default=None, help="onnxruntime-gpu wheel (or its *.part-aa... pieces) "
                    "and other wheels (onnxscript) to pip-install --no-deps into a target folder first")
    ap.add_argument("--ort-precisions", default="fp32,fp16", help="ONNX Runtime CUDA export precisions")
    ap.add_argument("--ort-graph-batches", default=None, help="fixed-batch exports timed with CUDA graphs (2048)")
    ap.add_argument("--skip", default="", help=f"phases to skip, comma-separated: {','.join(PHASES)}")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting phases after this (480; dry 300)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder (model, images, exports)")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not a.phase:
        return orchestrate(a)
    cfg = json.loads(Path(a.config).read_text())
    out = Path(cfg["work"]) / f"phase-{a.phase}.json"
    fn = {"machine": phase_machine, "pytest": phase_pytest, "bench": phase_bench, "profile": phase_profile,
          "e2e": phase_e2e}[a.phase]
    try:
        result = fn(cfg)
        write_json(out, result)
        return 0
    except Exception as e:
        partial = json.loads(out.read_text()) if out.exists() else {}
        partial["_error"] = f"{type(e).__name__}: {e}\n{tail(traceback.format_exc(), 20)}"
        write_json(out, partial)
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
