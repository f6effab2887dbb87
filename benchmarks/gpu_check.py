"""GPU proof (issue 17): one prepared run of every GPU path, with the figures written as JSON and Markdown.

    bash benchmarks/gpu_check.sh                       # on an H100 / H200: results in $OUT (~5-8 minutes)
    bash benchmarks/gpu_check.sh --dry --out /tmp/gc   # the same script on CPU with tiny sizes (CI: ~40 s)
    python benchmarks/gpu_check.py --help

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
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from gcomp.benchmarks.flops import flops_per_iteration  # noqa: F401 (the repo root is on PYTHONPATH as gcomp)

ROOT = Path(__file__).resolve().parent.parent  # the repository root, which is the `gcomp` package
SCHEMA = "gcomp-gpu-check/1"
PHASES = ("machine", "bench", "profile", "e2e", "pytest")  # pytest last: it takes what time is left
# Time boxes (s) per phase on a GPU; the run also stops starting work at --budget-s.
BOXES = {"machine": 60, "bench": 300, "profile": 90, "e2e": 150, "pytest": 240}  # the H200 run took 134 s in all
DRY_BOXES = {"machine": 60, "bench": 120, "profile": 60, "e2e": 120, "pytest": 120}
# A skip for one of these reasons is a missing package, which the issue allows; any other skip is flagged.
ALLOWED_SKIP = re.compile(r"onnxruntime-gpu|TensorRT|tensorrt|cuda-python|not installed|could not import|"
                          r"No module named|optional extra", re.I)
LOG_TAIL = 400  # lines of a subprocess's output kept in the logs


# -- helpers ------------------------------------------------------------------------------------------------
def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x.strip()]


def semis(s: str) -> list[str]:
    """Kernel choices, ';' between them (a choice may itself be a comma list: nhwc,masks)."""
    return [k.strip() for k in s.split(";") if k.strip()]


def csv_strs(s: str) -> list[str]:
    return [x.strip() for x in str(s).split(",") if x.strip()]


def tail(text: str, n: int = LOG_TAIL) -> str:
    lines = text.splitlines()
    return "\n".join(([f"[... {len(lines) - n} lines cut ...]"] if len(lines) > n else []) + lines[-n:])


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def import_path_env() -> dict:
    """Environment in which `import gcomp` is this tree: the repository root is the package, so a folder
    holding a symlink named gcomp -> ROOT on PYTHONPATH is enough (no pip, no network)."""
    env = dict(os.environ)
    link_dir = Path(tempfile.gettempdir()) / f"gcomp-path-{os.getuid()}"
    link = link_dir / "gcomp"
    link_dir.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == ROOT):
        tmp = link_dir / f".gcomp-{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(ROOT, target_is_directory=True)
        os.replace(tmp, link)
    parts = [str(link_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def run_logged(cmd: list[str], timeout: float, env: dict, cwd: Path | None = None) -> dict:
    """Run cmd in its own process group; on timeout the whole group is killed. Output captured."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", start_new_session=True)
    try:
        out, _ = p.communicate(timeout=max(1.0, timeout))
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = p.communicate()
        timed_out = True
    return {"cmd": cmd, "exit_code": p.returncode, "timed_out": timed_out, "seconds": time.perf_counter() - t0,
            "output": out or ""}


# -- configuration ------------------------------------------------------------------------------------------
def build_config(a: argparse.Namespace) -> dict:
    dry = a.dry
    pick = lambda given, real, tiny: given if given is not None else (tiny if dry else real)  # noqa: E731
    cfg = {
        "dry": dry,
        "device": pick(a.device, "cuda", "cpu"),
        "model": ({"size": 32, "zdim": 16, "gf": 8, "df": 8} if dry else {"size": 64, "zdim": 100, "gf": 64, "df": 64}),
        "batches": csv_ints(pick(a.batches, "64,256,1024,2048", "2,4")),
        "precisions": csv_strs(pick(a.precisions, "bf16,tf32,fp32", "bf16,tf32,fp32")),
        "graphs": csv_strs(pick(a.graphs, "on,off", "on,off")),
        # bf16 CUDA-graph rows at every batch, per kernel choice (engine/backends/torch_backend.py KERNELS)
        "kernels": semis(pick(a.kernels, "portable;tuned", "portable;tuned")),
        # one lever at a time at the largest batch (';' between choices); compile last: it takes a minute
        # levers build up: channels-last, then + fused masks, then + padding and torch.compile (the dry run
        # times a comma-named choice too, but not compile: that is tests/test_fast_paths.py's, ~30 s on CPU)
        "levers": semis(pick(a.levers, "nhwc;nhwc,masks;nhwc,pad8,masks,compile", "nhwc;nhwc,masks;pad8")),
        "profile_kernels": semis(pick(a.profile_kernels, "portable;tuned", "portable;tuned")),
        "warmup": pick(a.warmup, 3, 1),
        "iters_short": pick(a.iters_short, 10, 2),
        "iters_long": pick(a.iters_long, 60, 6),
        "seed_batch": pick(a.seed_batch, 64, 4),
        "seed_iters": pick(a.seed_iters, 50, 3),
        "full_iters": a.full_iters,
        "default_iters": a.default_iters,
        "matmul_n": pick(a.matmul_n, 8192, 256),
        "profile_steps": pick(a.profile_steps, 5, 2),
        "profile_batch": a.profile_batch,
        "e2e_images": pick(a.e2e_images, 3000, 20),
        "e2e_batches": csv_ints(pick(a.e2e_batches, "64,1024", "8")),
        "e2e_io_threads": csv_ints(pick(a.e2e_io_threads, "4,16", "4")),
        "e2e_iters": pick(a.e2e_iters, a.default_iters, 3),
        "e2e_precision": a.e2e_precision,
        "e2e_extra": a.e2e_extra,
        "ort": csv_strs(a.ort_precisions),
        "ort_graph_batches": csv_ints(pick(a.ort_graph_batches, "2048", "")),
        "phases": [p for p in PHASES if p not in set(csv_strs(a.skip))],
        "budget_s": pick(a.budget_s, 480, 300),
        "boxes": dict(DRY_BOXES if dry else BOXES),
        "pytest_args": a.pytest_args,
    }
    return cfg


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


def install_ort_wheels(wheel_dir: str, work: Path, env: dict, log) -> dict:
    """Join split wheel parts (NAME.whl.part-aa, NAME.whl.part-ab, ... in name order), pip-install them and any
    whole wheels of the folder into a --target folder put first on PYTHONPATH (it then shadows the image's
    CPU onnxruntime). --no-deps --no-index: nothing is downloaded; the image has onnxruntime's dependencies."""
    src = Path(wheel_dir)
    info: dict = {"installed": False, "dir": str(src)}
    if not src.is_dir():
        info["reason"] = f"--ort-wheel-dir {src} is not a folder"
        return info
    joined = work / "wheels"
    joined.mkdir(exist_ok=True)
    groups: dict[str, list[Path]] = {}
    for p in sorted(src.iterdir()):
        m = re.match(r"(.+)\.part-?[a-z0-9]+$", p.name)
        if m:
            groups.setdefault(m.group(1), []).append(p)
    wheels = [p for p in sorted(src.glob("*.whl"))]
    for name, parts in groups.items():
        target = joined / name
        with target.open("wb") as f:
            for part in sorted(parts):
                f.write(part.read_bytes())
        wheels.append(target)
        log(f"joined {len(parts)} parts into {target.name} ({target.stat().st_size / 2**20:.0f} MiB)")
    if not wheels:
        info["reason"] = f"no wheel or wheel parts in {src}"
        return info
    site = work / "site"
    r = run_logged([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
                    "--target", str(site)] + [str(w) for w in wheels], 240, env)
    info.update({"wheels": [w.name for w in wheels], "pip_exit_code": r["exit_code"], "pip_tail": tail(r["output"], 10)})
    if r["exit_code"] != 0:
        info["reason"] = "pip install failed"
        return info
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + env["PYTHONPATH"].split(os.pathsep))
    # onnxruntime-gpu loads CUDA, cuBLAS and cuDNN by name: those of torch's nvidia-* wheels, when present
    libs = nvidia_lib_dirs()
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
        info["ld_library_path"] = libs
    info["installed"] = True
    log(f"installed {', '.join(w.name for w in wheels)} into {site}")
    return info


def nvidia_lib_dirs() -> list[str]:
    """lib folders of the installed nvidia-* wheels (cudnn, cublas, cuda_runtime, ...), without importing torch."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec else []
    return sorted(str(d) for r in roots for d in Path(r).glob("*/lib") if d.is_dir())


# -- phase: machine ---------------------------------------------------------------------------------------
def phase_machine(cfg: dict) -> dict:
    import numpy as np  # noqa: F401
    import torch

    from gcomp.benchmarks.machine import cpu_model

    m: dict = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
               "cpu": cpu_model(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
               "cudnn": None, "gpu": None, "libraries": {}}
    try:
        m["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        pass
    m["libraries"] = installed_packages()
    try:
        import onnxruntime as ort

        m["onnxruntime_providers"] = ort.get_available_providers()
    except Exception as e:
        m["onnxruntime_providers"] = f"unavailable: {e}"
    try:
        q = "name,driver_version,memory.total,clocks.max.sm,power.limit"
        r = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        rows = [dict(zip(q.split(","), (x.strip() for x in line.split(",")))) for line in r.stdout.strip().splitlines()]
        m["nvidia_smi"] = rows or r.stderr.strip() or None
    except Exception as e:
        m["nvidia_smi"] = f"not available ({type(e).__name__})"
    dev = cfg["device"]
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {dev}: torch {torch.__version__} sees no CUDA GPU")
        p = torch.cuda.get_device_properties(dev)
        m["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                    "sms": p.multi_processor_count}
    roof = matmul_peaks(torch, dev, cfg["matmul_n"])
    mc = cfg["model"]
    flops = flops_per_iteration(mc["size"], mc["zdim"], mc["gf"], mc["df"])
    bf16 = roof["tflops"].get("bf16")
    roof.update({"flops_per_image_iteration": flops,
                 "bf16_roofline_images_per_s_1000": (bf16 * 1e12 / (flops * cfg["full_iters"])) if bf16 else None,
                 "bf16_roofline_images_per_s_default": (bf16 * 1e12 / (flops * cfg["default_iters"])) if bf16 else None})
    return {"machine": m, "roofline": roof}


PACKAGES = re.compile(r"^(torch|numpy|onnx|onnxruntime.*|onnxscript|opencv.*|typer|rich|pytest|cupy.*|cuda-.*|"
                      r"nvidia-cudnn.*|nvidia-cublas.*|nvidia-cuda-runtime.*|tensorrt.*|openvino|ray)$", re.I)


def installed_packages() -> dict:
    """Versions of the distributions that matter here, read from their metadata (nothing is imported)."""
    from importlib import metadata

    found = {}
    for d in metadata.distributions():
        name = (d.metadata.get("Name") or "").strip()
        if name and PACKAGES.match(name):
            found[name.lower()] = d.version
    return dict(sorted(found.items()))


def matmul_peaks(torch, dev: str, n: int) -> dict:
    """Dense matmul throughput (n x n x n) in bf16, tf32 and fp32: the peaks the shares are taken against."""
    on_cuda = dev.startswith("cuda")

    def set_tf32(on: bool) -> None:  # the legacy switch, or torch >= 2.9's API where the legacy one refuses
        m = torch.backends.cuda.matmul
        try:
            m.allow_tf32 = on
        except Exception:
            m.fp32_precision = "tf32" if on else "ieee"

    res: dict = {"method": f"{n}x{n}x{n} matmul, best of the timed repeats", "device": dev, "tflops": {}}
    for prec in ("bf16", "tf32", "fp32"):
        if prec == "tf32" and not on_cuda:
            continue
        try:
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            if on_cuda and prec != "bf16":
                set_tf32(prec == "tf32")
            x = torch.randn(n, n, device=dev, dtype=dtype)
            y = torch.randn(n, n, device=dev, dtype=dtype)
            reps = 3 if not on_cuda else {"bf16": 20, "tf32": 10, "fp32": 4}[prec]
            for _ in range(2):
                x @ y
            best = float("inf")
            for _ in range(reps):
                if on_cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                x @ y
                if on_cuda:
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            res["tflops"][prec] = 2 * n**3 / best / 1e12
        except Exception as e:
            res.setdefault("errors", {})[prec] = f"{type(e).__name__}: {e}"
    if on_cuda:
        try:
            set_tf32(False)
        except Exception:
            pass
    return res


# -- phase: pytest ------------------------------------------------------------------------------------------
def phase_pytest(cfg: dict) -> dict:
    work, out = Path(cfg["work"]), Path(cfg["out"])
    xml = work / "pytest-gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}",
           *shlex.split(cfg.get("pytest_args") or ""), "tests"]
    left = cfg["phase_deadline"] - time.time()
    r = run_logged(cmd, left, dict(os.environ), cwd=ROOT)
    (out / "pytest_gpu.log").write_text(tail(r["output"], 2000) + "\n")
    res = {"command": " ".join(cmd[2:]).replace(str(work), "$WORK"), "exit_code": r["exit_code"], "timed_out": r["timed_out"],
           "seconds": round(r["seconds"], 1), "log": "pytest_gpu.log", "passed": 0, "failed": 0, "errors": 0,
           "skipped": 0, "tests": [], "skips": [], "failures": []}
    if xml.exists():
        import xml.etree.ElementTree as ET

        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            kids = {c.tag: c for c in case}
            if "skipped" in kids:
                # A module-level skip's message is just "collection skipped"; its reason is in the element's text.
                reason = " ".join(filter(None, [kids["skipped"].get("message", ""), (kids["skipped"].text or "").strip()]))
                res["skipped"] += 1
                res["skips"].append({"test": name, "reason": reason, "allowed": bool(ALLOWED_SKIP.search(reason))})
                outcome = "skipped"
            elif "failure" in kids or "error" in kids:
                kind = "failure" if "failure" in kids else "error"
                res["failed" if kind == "failure" else "errors"] += 1
                res["failures"].append({"test": name, "kind": kind, "message": (kids[kind].get("message") or "")[:500]})
                outcome = kind
            else:
                res["passed"] += 1
                outcome = "passed"
            res["tests"].append({"test": name, "outcome": outcome, "seconds": float(case.get("time") or 0)})
    m = re.search(r"(\d+) deselected", r["output"])
    res["deselected"] = int(m.group(1)) if m else 0
    unexpected = [s for s in res["skips"] if not s["allowed"]]
    res["unexpected_skips"] = len(unexpected)
    # On a GPU: every test ran, or was skipped for a missing package. A dry run on CPU skips for "no GPU".
    res["ok"] = (r["exit_code"] in (0, 5) and not r["timed_out"] and res["failed"] == 0 and res["errors"] == 0
                 and (cfg["dry"] or (not unexpected and res["passed"] > 0)))
    return {"pytest": res}


# -- the model and inputs -----------------------------------------------------------------------------------
def ensure_checkpoint(cfg: dict) -> Path:
    """The random-weight model every phase uses (BatchNorm statistics from a few forward passes, as a
    trained model would have them: with the init's (0, 1) statistics the outputs are ~1e-4)."""
    path = Path(cfg["work"]) / "model" / "checkpoint.pt"
    if path.exists():
        return path
    import torch

    from gcomp.train import checkpoint
    from gcomp.train.model import ModelConfig, build

    torch.manual_seed(0)
    mc = ModelConfig(**cfg["model"])
    G, D = build(mc)
    bns = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    G.train(), D.train()
    with torch.no_grad():
        for _ in range(3):
            x = G(torch.rand(64, mc.zdim) * 2 - 1)
            D(torch.cat([x, torch.rand_like(x) * 2 - 1]))
    for m in bns:
        m.momentum = 0.1
    G.eval(), D.eval()
    return checkpoint.save(path, mc, G, D, step=0)


def search_inputs(batch: int, size: int, zdim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    z = rng.uniform(-1, 1, (batch, zdim)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    w = np.ones((batch, 1, size, size), np.float32)
    w[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0  # the center mask
    return z, y, w


def import_reference():
    """The autograd oracle (the seed's loss and gradient): gcomp.train.reference, formerly gcomp.engine.reference."""
    import importlib

    errors = []
    for name in ("gcomp.train.reference", "gcomp.engine.reference"):
        try:
            return importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ImportError("the reference loop does not import: " + "; ".join(errors))


def _sync(torch, dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


# -- phase: bench -------------------------------------------------------------------------------------------
class Rows:
    """Rows written to the phase's JSON after each one, so a time box keeps what was measured."""

    def __init__(self, cfg: dict, roofline: dict | None):
        self.cfg, self.rows, self.seed = cfg, [], None
        mc = cfg["model"]
        self.flops = flops_per_iteration(mc["size"], mc["zdim"], mc["gf"], mc["df"])
        self.bf16_peak = ((roofline or {}).get("tflops") or {}).get("bf16")
        self.path = Path(cfg["work"]) / "phase-bench.json"
        self.extra: dict = {}

    def figures(self, batch: int, step_s: float, overhead_s: float = 0.0) -> dict:
        c = self.cfg
        f = {"step_ms": step_s * 1e3, "search_overhead_ms": overhead_s * 1e3,
             "images_per_s_1000": batch / (step_s * c["full_iters"]),
             "images_per_s_default": batch / (step_s * c["default_iters"]),
             "images_per_s_1000_with_overhead": batch / (step_s * c["full_iters"] + overhead_s),
             "achieved_tflops": self.flops * batch / step_s / 1e12}
        f["share_of_bf16_roofline"] = (f["achieved_tflops"] / self.bf16_peak) if self.bf16_peak else None
        if self.seed:
            f["ratio_vs_seed_loop"] = f["images_per_s_1000"] / self.seed["images_per_s_1000"]
        return f

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def save(self) -> None:
        write_json(self.path, {"seed_loop": self.seed, "rows": self.rows, **self.extra})


def phase_bench(cfg: dict) -> dict:
    import numpy as np
    import torch

    dev, mc = cfg["device"], cfg["model"]
    ckpt = ensure_checkpoint(cfg)
    roof_path = Path(cfg["work"]) / "phase-machine.json"
    roofline = json.loads(roof_path.read_text()).get("roofline") if roof_path.exists() else None
    rows = Rows(cfg, roofline)
    deadline = cfg["phase_deadline"]
    print(f"bench on {dev}: model {mc}, batches {cfg['batches']}, steps {cfg['iters_short']}/{cfg['iters_long']}",
          flush=True)

    # 1. The seed-faithful loop: autograd gradient on the device, copied to the host, numpy update, z back.
    loss_and_grad = import_reference().loss_and_grad
    from gcomp.train.checkpoint import load_models

    _, G, D = load_models(ckpt, dev)
    B = cfg["seed_batch"]
    z, y, w = search_inputs(B, mc["size"], mc["zdim"])
    yt, wt = torch.from_numpy(y).to(dev), torch.from_numpy(w).to(dev)
    v = np.zeros_like(z)
    lr, mom, lam = 0.01, 0.9, 0.1
    lat = []
    for i in range(cfg["warmup"] + cfg["seed_iters"]):
        t0 = time.perf_counter()
        _, g = loss_and_grad(G, D, torch.from_numpy(z).to(dev), yt, wt, lam)
        g = g.cpu().numpy()
        v_new = mom * v - lr * g
        z = np.clip(z - mom * v + (1 + mom) * v_new, -1, 1).astype(np.float32)
        v = v_new
        if i >= cfg["warmup"]:
            lat.append(time.perf_counter() - t0)
    step = float(np.mean(lat))
    figures = rows.figures(B, step)
    figures.update(search_overhead_ms=None, images_per_s_1000_with_overhead=None)
    rows.seed = {"name": "seed loop (eager autograd, gradient to the host, numpy update)", "backend": "seed",
                 "precision": "fp32", "cuda_graph": None, "batch": B, "status": "ok", "steps_timed": len(lat),
                 "step_ms_median": float(np.median(lat)) * 1e3, "finite": bool(np.isfinite(z).all())}
    rows.seed.update(figures)
    rows.seed["ratio_vs_seed_loop"] = 1.0
    rows.save()
    del G, D, yt, wt
    print(f"seed loop: {step * 1e3:.2f} ms/iteration at batch {B}", flush=True)

    from gcomp.engine.backends import open_backend
    from gcomp.engine.search import SearchParams

    def timed_search(be, batch: int) -> tuple[float, float, bool, float]:
        """(seconds per step, fixed seconds per search, final losses finite, peak memory MiB)."""
        z0, y, w = search_inputs(batch, mc["size"], mc["zdim"], seed=1)
        hp = lambda n: SearchParams(iters=n, lr=0.01, patience=0).resolved()  # noqa: E731
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        be.search(z0, y, w, hp(cfg["warmup"]))  # warm-up: cuDNN autotuning, allocator, CUDA graph capture
        times = {}
        for n in (cfg["iters_short"], cfg["iters_long"]):
            _sync(torch, dev)
            t0 = time.perf_counter()
            res = be.search(z0, y, w, hp(n))
            _sync(torch, dev)
            times[n] = time.perf_counter() - t0
        ns, nl = cfg["iters_short"], cfg["iters_long"]
        per = (times[nl] - times[ns]) / (nl - ns)
        if per <= 0:  # noise on a tiny run: fall back to the long search's mean
            per = times[nl] / nl
        fixed = max(0.0, times[ns] - ns * per)
        mem = torch.cuda.max_memory_allocated() / 2**20 if dev.startswith("cuda") else None
        return per, fixed, bool(np.isfinite(res.loss).all() and np.isfinite(res.z).all()), mem

    last_row_s = [0.0]

    def run_row(name: str, batch: int, opener, meta: dict) -> None:
        row = {"name": name, "batch": batch, **meta}
        if time.time() > deadline - max(5.0, 2 * last_row_s[0]):
            row.update(status="skipped", reason="the bench phase's time box was reached")
            rows.add(row)
            return
        t0 = time.perf_counter()
        try:
            with opener() as be:
                per, fixed, finite, mem = timed_search(be, batch)
                row["settings"] = be.settings() if hasattr(be, "settings") else {}
                row["notes"] = list(getattr(be, "notes", []) or [])
            row.update(status="ok", finite=finite, peak_memory_mib=mem, **rows.figures(batch, per, fixed))
            print(f"{name} b{batch}: {per * 1e3:.3f} ms/step, {row['images_per_s_1000']:.2f} images/s @ "
                  f"{cfg['full_iters']} it, {row.get('ratio_vs_seed_loop', 0):.1f}x seed loop", flush=True)
        except Exception as e:
            row.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=tail(traceback.format_exc(), 12))
            print(f"{name} b{batch}: FAILED {type(e).__name__}: {e}", flush=True)
        finally:
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
        last_row_s[0] = time.perf_counter() - t0
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.add(row)

    # 2. The autograd reference with the update on the device (the reference search), batch of the seed loop.
    run_row("torch reference (autograd, update on the device)", B,
            lambda: open_backend(ckpt, "torch", dev, precision="fp32", fast=False),
            {"backend": "torch-reference", "precision": "fp32", "cuda_graph": None})

    # 3. The torch fast path: bf16 first (the figure the issue asks for), then tf32, fp32; bf16 with CUDA
    #    graphs with each kernel choice at every batch, then one lever at a time at the largest batch.
    on_cuda = dev.startswith("cuda")
    for prec in cfg["precisions"]:
        for graph in cfg["graphs"]:
            g = graph == "on"
            best_path = prec == "bf16" and g
            for kernels in (cfg["kernels"] if best_path else ["portable"]):
                for batch in cfg["batches"]:
                    meta = {"backend": "torch", "precision": prec, "cuda_graph": g, "kernels": kernels}
                    name = f"torch fast path {prec} {'CUDA graph' if g else 'eager'}" + \
                        ("" if kernels == "portable" else f", kernels {kernels}")
                    if prec == "tf32" and not on_cuda:
                        rows.add({"name": name, "batch": batch, **meta, "status": "skipped",
                                  "reason": "tf32 is a CUDA mode (this run is on the CPU)"})
                        continue
                    if g and not on_cuda:
                        meta["note"] = "cuda_graph has no effect on CPU: the same loop as eager"
                    run_row(name, batch, lambda p=prec, gg=g, k=kernels: open_backend(
                        ckpt, "torch", dev, precision=p, cuda_graph=gg, fast=True, kernels=k), meta)
            if best_path:
                for kernels in cfg["levers"]:
                    run_row(f"torch fast path bf16 CUDA graph, kernels {kernels}", max(cfg["batches"]),
                            lambda k=kernels: open_backend(ckpt, "torch", dev, precision="bf16", cuda_graph=True,
                                                           fast=True, kernels=k),
                            {"backend": "torch", "precision": "bf16", "cuda_graph": True, "kernels": kernels,
                             "lever": True})

    # 4. ONNX Runtime CUDA, where onnxruntime-gpu is importable.
    ort_info = ort_status(dev)
    rows.extra["onnxruntime_cuda"] = ort_info
    if not ort_info["available"]:
        rows.add({"name": "onnxruntime CUDA", "backend": "onnxruntime", "precision": None, "cuda_graph": None,
                  "batch": None, "status": "unavailable", "reason": ort_info["reason"]})
    else:
        from gcomp.export import export_model

        for prec in cfg["ort"]:
            variants = [(False, "dynamic", cfg["batches"])] + [(True, b, [b]) for b in cfg["ort_graph_batches"]]
            for g, batch_spec, batches in variants:
                meta = {"backend": "onnxruntime", "precision": prec, "cuda_graph": g}
                target = Path(cfg["work"]) / f"onnx-{prec}-{batch_spec}"
                try:
                    if time.time() > deadline - 30:
                        raise TimeoutError("no time left in the bench phase's box to export")
                    if not (target / "step.onnx").exists():
                        t0 = time.perf_counter()
                        export_model(ckpt, target, precision=prec, batch=batch_spec, validate=False)
                        print(f"exported {prec} batch={batch_spec} in {time.perf_counter() - t0:.1f} s", flush=True)
                except Exception as e:
                    for b in batches:
                        rows.add({"name": f"onnxruntime CUDA {prec}", "batch": b, **meta, "status": "failed",
                                  "error": f"export: {type(e).__name__}: {e}"})
                    continue
                for b in batches:
                    run_row(f"onnxruntime CUDA {prec} {'CUDA graph (fixed batch)' if g else 'IO binding'}", b,
                            lambda t=target, gg=g: open_backend(t, "onnxruntime", dev, cuda_graph=gg), meta)
    # 5. TensorRT: the GPU images carry none (DESIGN.md 4-5); say so rather than leave it out.
    import importlib.util

    trt = [m for m in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(m) is not None]
    rows.add({"name": "tensorrt", "backend": "tensorrt", "precision": None, "cuda_graph": None, "batch": None,
              "status": "unavailable", "reason": (f"{', '.join(trt)} importable but not timed by this script (build "
                                                  "engines with gcomp export --trt and time them with gcomp bench)"
                                                  if trt else "TensorRT is not installed on this machine")})
    rows.save()
    return json.loads(rows.path.read_text())


def ort_status(dev: str) -> dict:
    try:
        import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu can reuse)
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception:
                pass
        providers = ort.get_available_providers()
        info = {"onnxruntime": ort.__version__, "providers": providers}
    except Exception as e:
        return {"available": False, "reason": f"onnxruntime does not import: {e}"}
    if "CUDAExecutionProvider" not in providers:
        info.update(available=False, reason=f"onnxruntime-gpu not available: onnxruntime {ort.__version__} has "
                    f"providers {providers} (the CPU package; no onnxruntime-gpu wheel was installed)")
    elif not dev.startswith("cuda"):
        info.update(available=False, reason="dry run on CPU: the CUDA provider is not exercised")
    else:
        info.update(available=True, reason="")
    return info


# -- phase: profile -----------------------------------------------------------------------------------------
KERNEL_GROUPS = (
    ("convolution / GEMM", re.compile(r"conv|gemm|xmma|cutlass|implicit|wgrad|dgrad|fprop|sm90_|sm80_|cudnn|"
                                      r"nvjet|hmma|mma|aten::(?:_?convolution|conv|mm|addmm|linear|matmul)", re.I)),
    ("layout / copies", re.compile(r"transpose|nchwToNhwc|nhwcToNchw|copy|memcpy|memset|convert|cat|aten::to\b", re.I)),
    ("reductions", re.compile(r"reduce|sum|norm|mean", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized|unrolled|pointwise|aten::(?:mul|add|sub|div|where|clamp|"
                               r"abs|sign|tanh|relu|leaky|sigmoid|softplus|neg)", re.I)),
)


def kernel_group(name: str) -> str:
    for group, rx in KERNEL_GROUPS:
        if rx.search(name):
            return group
    return "other"


def phase_profile(cfg: dict) -> dict:
    """One profile per kernel choice in cfg["profile_kernels"]; "profile" is the first (the portable ops,
    comparable with earlier runs), "profiles" all of them."""
    profiles = []
    for kernels in cfg["profile_kernels"]:
        try:
            profiles.append(profile_one(cfg, kernels))
        except Exception as e:  # one failing choice does not lose the others
            profiles.append({"kernels": kernels, "error": f"{type(e).__name__}: {e}"})
            traceback.print_exc()
    if profiles and all("error" in p for p in profiles):
        raise RuntimeError("every profile failed: " + "; ".join(p["error"] for p in profiles))
    return {"profile": profiles[0] if profiles else None, "profiles": profiles}


def _dev_time(e) -> float:
    """An event's own device time in microseconds, on whichever attribute this torch version has."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(e, attr, None)
        if v:
            return float(v)
    return 0.0


def kernel_times(events, on_cuda: bool, device_type=None) -> tuple[list[tuple[str, float, int]], str]:
    """[(name, microseconds, calls)] of the profiled work and what the time is: on CUDA each GPU kernel's own
    time (events of device type CUDA, else any event with device time of its own), on CPU each aten op's own
    CPU time. The one branch the CPU dry run cannot reach on its own: tests/test_gpu_check.py feeds it events."""
    if on_cuda:
        gpu = [e for e in events if device_type is not None and getattr(e, "device_type", None) == device_type.CUDA]
        if not gpu:  # older/newer profilers
            gpu = [e for e in events if _dev_time(e) > 0]
        return [(e.key, _dev_time(e), e.count) for e in gpu], "GPU kernel time"
    return ([(e.key, float(e.self_cpu_time_total), e.count) for e in events
             if e.key.startswith("aten::") and e.self_cpu_time_total > 0], "CPU self time of aten ops (dry run on CPU)")


def profile_one(cfg: dict, kernels: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gcomp.engine.backends import open_backend
    from gcomp.engine.search import SearchParams

    dev, mc = cfg["device"], cfg["model"]
    on_cuda = dev.startswith("cuda")
    ckpt = ensure_checkpoint(cfg)
    batch = cfg["profile_batch"] or max(cfg["batches"])
    n = cfg["profile_steps"]
    z0, y, w = search_inputs(batch, mc["size"], mc["zdim"], seed=2)
    res: dict = {"precision": "bf16", "kernels": kernels, "batch": batch, "steps": n, "device": dev,
                 "what": "eager bf16 fast-path steps under torch.profiler, exactly `steps` of them (the loop's "
                         "step function on device-resident inputs: no host copies, no final loss; kernels inside "
                         "a CUDA graph are not visible to it, and the graph replays the same kernels)"}
    hp = SearchParams(iters=n, lr=0.01, patience=0).resolved()
    with open_backend(ckpt, "torch", dev, precision="bf16", cuda_graph=False, fast=True, kernels=kernels) as be:
        be.search(z0, y, w, SearchParams(iters=3, lr=0.01, patience=0).resolved())  # warm-up: cuDNN autotuning
        # The backend's own step function on its static buffers (private hooks, fine for a profiler): a
        # whole search would add its host-to-device copies and final loss to the per-step figures. Inside
        # the backend's scope, as its search runs: cuDNN's autotuner and the TF32 switches set the same way.
        with be._scope(), torch.no_grad():
            run, _ = be._fast_loop(z0, y, w, hp)
            run()
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
            _sync(torch, dev)
            t0 = time.perf_counter()
            with profile(activities=acts) as prof:
                for _ in range(n):
                    run()
                _sync(torch, dev)
            res["profiled_wall_ms_per_step"] = (time.perf_counter() - t0) * 1e3 / n
    events = prof.key_averages()

    timed, res["time_basis"] = kernel_times(events, on_cuda, getattr(torch.autograd, "DeviceType", None))
    timed = [t for t in timed if t[1] > 0]
    total_us = sum(t[1] for t in timed) or 1.0
    timed.sort(key=lambda t: -t[1])
    res["kernel_ms_per_step"] = total_us / 1e3 / n
    res["top"] = [{"name": k[:160], "ms_per_step": us / 1e3 / n, "share": us / total_us, "calls_per_step": c / n,
                   "group": kernel_group(k)} for k, us, c in timed[:20]]
    groups: dict[str, float] = {}
    for k, us, _ in timed:
        groups[kernel_group(k)] = groups.get(kernel_group(k), 0.0) + us
    res["groups"] = {g: {"ms_per_step": us / 1e3 / n, "share": us / total_us}
                     for g, us in sorted(groups.items(), key=lambda kv: -kv[1])}
    flops = flops_per_iteration(mc["size"], mc["zdim"], mc["gf"], mc["df"]) * batch
    conv_ms = res["groups"].get("convolution / GEMM", {}).get("ms_per_step")
    res["flops_per_step"] = flops
    res["conv_gemm_tflops"] = flops / (conv_ms / 1e3) / 1e12 if conv_ms else None
    res["all_kernels_tflops"] = flops / (res["kernel_ms_per_step"] / 1e3) / 1e12 if res["kernel_ms_per_step"] else None
    # against the bench: how busy the GPU is during a CUDA-graph step at this batch, and the matmul peak
    bench_path, mach_path = Path(cfg["work"]) / "phase-bench.json", Path(cfg["work"]) / "phase-machine.json"
    if bench_path.exists():
        for r in json.loads(bench_path.read_text()).get("rows", []):
            if (r.get("backend") == "torch" and r.get("precision") == "bf16" and r.get("batch") == batch
                    and r.get("status") == "ok" and r.get("kernels", "portable") == kernels and not r.get("lever")):
                key = "graph_step_ms" if r.get("cuda_graph") else "eager_step_ms"
                res[key] = r["step_ms"]
        if on_cuda and res.get("graph_step_ms"):
            res["gpu_busy_share_of_graph_step"] = res["kernel_ms_per_step"] / res["graph_step_ms"]
    if mach_path.exists():
        peak = ((json.loads(mach_path.read_text()).get("roofline") or {}).get("tflops") or {}).get("bf16")
        if peak and res["conv_gemm_tflops"]:
            res["conv_gemm_share_of_bf16_matmul_peak"] = res["conv_gemm_tflops"] / peak
    res["reading"] = profile_reading(res)
    try:
        table = events.table(sort_by="self_device_time_total" if on_cuda else "self_cpu_time_total", row_limit=40)
    except Exception:
        table = events.table(sort_by="self_cuda_time_total" if on_cuda else "self_cpu_time_total", row_limit=40)
    fname = f"profile-{kernels.replace(',', '+')}.txt"
    (Path(cfg["out"]) / fname).write_text(
        f"torch.profiler: {n} eager bf16 fast-path steps, kernels {kernels}, batch {batch}, {dev}\n"
        f"{json.dumps({k: v for k, v in res.items() if k not in ('top',)}, indent=1, default=str)}\n\n{table}\n")
    res["file"] = fname
    return res


def profile_reading(p: dict) -> str:
    """One sentence on what bounds the bf16 step, from the measured shares."""
    g = p.get("groups") or {}
    conv = g.get("convolution / GEMM", {}).get("share", 0.0)
    parts = [f"convolution/GEMM kernels take {conv:.0%} of the kernel time"]
    if p.get("conv_gemm_share_of_bf16_matmul_peak") is not None:
        parts.append(f"and run at {p['conv_gemm_tflops']:.0f} TFLOP/s, "
                     f"{p['conv_gemm_share_of_bf16_matmul_peak']:.0%} of the bf16 matmul peak")
    busy = p.get("gpu_busy_share_of_graph_step")
    if busy is not None:
        parts.append(f"; the GPU computes {min(busy, 1.0):.0%} of a CUDA-graph step" +
                     (" (kernel-bound, not launch-bound)" if busy > 0.85 else " (idle gaps: launch or sync bound)"))
    other = [f"{k} {v['share']:.0%}" for k, v in g.items() if k != "convolution / GEMM"]
    if other:
        parts.append("; the rest: " + ", ".join(other))
    return " ".join(parts).replace(" ;", ";")


# -- phase: e2e ---------------------------------------------------------------------------------------------
def make_faces(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Smooth synthetic 'faces' (an ellipse, two eyes, a mouth on a gradient), distinct per image, as PNG."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, size, dtype=np.float32)[:, None, None] * np.ones((1, size, 3), np.float32)
    for i in range(n):
        img = (base * rng.uniform(0.6, 1.2, 3)).clip(0, 255).astype(np.uint8)
        c = tuple(int(v) for v in rng.integers(60, 250, 3))
        cx, cy = size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3))
        cv2.ellipse(img, (cx, cy), (size // 3, size // 2 - 2), 0, 0, 360, c, -1)
        for dx in (-size // 6, size // 6):
            cv2.circle(img, (cx + dx, cy - size // 10), max(size // 16, 1), (20, 20, 20), -1)
        cv2.ellipse(img, (cx, cy + size // 5), (size // 8, max(size // 24, 1)), 0, 0, 180, (40, 30, 120), -1)
        noise = rng.normal(0, 4, img.shape)
        cv2.imwrite(str(folder / f"face_{i:05d}.png"), (img + noise).clip(0, 255).astype(np.uint8))


def phase_e2e(cfg: dict) -> dict:
    work, out = Path(cfg["work"]), Path(cfg["out"])
    ckpt = ensure_checkpoint(cfg)
    src = work / "e2e-in"
    t0 = time.perf_counter()
    make_faces(src, cfg["e2e_images"], cfg["model"]["size"])
    res: dict = {"images": cfg["e2e_images"], "image_size": cfg["model"]["size"], "format": "png",
                 "generate_s": round(time.perf_counter() - t0, 2), "runs": []}
    logs = []
    import importlib.util

    blend = []
    if importlib.util.find_spec("scipy") is None:  # the default blend's sparse solve needs scipy
        blend = ["--blend", "none"]
        res["note"] = "scipy is not installed on this machine: e2e ran with --blend none"
    # decode/encode threads too: on the H200 batch 1024 ran slower end to end than 64 (178 vs 260 images/s)
    # with the default 4 threads on a 16-core host, while its search alone is ~10x faster than that
    for batch, threads in [(b, t) for b in cfg["e2e_batches"] for t in cfg["e2e_io_threads"]]:
        dst = work / f"e2e-out-b{batch}-t{threads}"
        cmd = [sys.executable, "-m", "gcomp", "complete", str(src), str(dst), "--model", str(ckpt),
               "--device", cfg["device"], "--backend", "torch", "--precision", cfg["e2e_precision"],
               "--iters", str(cfg["e2e_iters"]), "--batch-size", str(batch), "--io-threads", str(threads),
               "--no-progress", *blend, *shlex.split(cfg.get("e2e_extra") or "")]
        run = {"batch": batch, "io_threads": threads, "command": " ".join(["gcomp"] + cmd[3:]).replace(str(work), "$WORK"),
               "iters": cfg["e2e_iters"], "precision": cfg["e2e_precision"]}
        left = cfg["phase_deadline"] - time.time()
        if left < 10:
            run.update(status="skipped", reason="the e2e phase's time box was reached")
            res["runs"].append(run)
            continue
        r = run_logged(cmd, left, dict(os.environ), cwd=work)
        logs.append(f"$ {run['command']}\n(exit {r['exit_code']}, {r['seconds']:.1f} s)\n{tail(r['output'], 60)}\n")
        run.update(exit_code=r["exit_code"], timed_out=r["timed_out"], wall_s=round(r["seconds"], 2))
        summary = dst / "gcomp-summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            run.update(done=s.get("done"), failed=s.get("n_failed", len(s.get("failed", []))),
                       seconds=s.get("seconds"), search_seconds=s.get("search_seconds"),
                       images_per_s=s.get("images_per_s"),
                       images_per_s_wall=(s.get("done") or 0) / r["seconds"] if r["seconds"] else None,
                       backend_settings=(s.get("settings") or {}).get("backend_settings"))
            written = sum(1 for p in dst.rglob("*.png"))
            run["written"] = written
            run["status"] = ("ok" if r["exit_code"] == 0 and s.get("done") == cfg["e2e_images"]
                             and written == cfg["e2e_images"] else "failed")
        else:
            run["status"] = "failed"
            run["error"] = tail(r["output"], 8)
        res["runs"].append(run)
        print(f"e2e batch {batch}, {threads} I/O threads: {run['status']}, {run.get('images_per_s') or 0:.1f} images/s",
              flush=True)
    (out / "e2e.log").write_text("\n".join(logs))
    res["log"] = "e2e.log"
    return {"e2e": res}


# -- verdict and markdown -----------------------------------------------------------------------------------
def verdict(rep: dict) -> dict:
    rows = [r for r in rep.get("rows", []) if r.get("status") == "ok"]
    bf16g = [r for r in rows if r.get("backend") == "torch" and r.get("precision") == "bf16" and r.get("cuda_graph")]
    best = max(bf16g, key=lambda r: r["images_per_s_1000"], default=None)
    v = {"dry_run": rep.get("dry"),
         "pytest_all_pass": (rep.get("pytest") or {}).get("ok"),
         "best_bf16_cuda_graph": ({"batch": best["batch"], "images_per_s_1000": best["images_per_s_1000"],
                                   "kernels": best.get("kernels", "portable"),
                                   "ratio_vs_seed_loop": best.get("ratio_vs_seed_loop"),
                                   "share_of_bf16_roofline": best.get("share_of_bf16_roofline")} if best else None)}
    if rep.get("dry"):
        v["done_when_met"] = None
        v["note"] = "dry run on CPU: not a GPU proof"
    elif best:
        v["target_300_images_per_s"] = best["images_per_s_1000"] >= 300
        v["target_50x_seed_loop"] = (best.get("ratio_vs_seed_loop") or 0) >= 50
        v["done_when_met"] = bool(v["pytest_all_pass"] and v["target_300_images_per_s"] and v["target_50x_seed_loop"])
    else:
        v["done_when_met"] = False
    return v


def _f(x, fmt="{:.2f}", none="—") -> str:
    if x is None:
        return none
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return str(x)


def _graph(g) -> str:
    return "—" if g is None else ("on" if g else "off")


def markdown(rep: dict) -> str:
    m = rep.get("machine") or {}
    gpu = m.get("gpu") or {}
    smi = m.get("nvidia_smi")
    smi0 = smi[0] if isinstance(smi, list) and smi else {}
    cfg = rep.get("config") or {}
    full, dflt = cfg.get("full_iters", 1000), cfg.get("default_iters", 100)
    L = [f"# gcomp GPU check — {gpu.get('name') or ('dry run on CPU' if rep.get('dry') else rep.get('device'))}", ""]
    if rep.get("dry"):
        L += ["**Dry run: CPU numbers from a tiny model (32×32, gf = df = 8). They test the script, not a GPU.**", ""]
    L += [f"Started {rep.get('started')}, {rep.get('wall_s')} s in all; commit {rep.get('commit') or 'unknown'}.", "",
          "## Machine", "",
          f"- GPU: {gpu.get('name', '—')} (compute capability {gpu.get('capability', '—')}, "
          f"{gpu.get('memory_gib', '—')} GiB, {gpu.get('sms', '—')} SMs); driver {smi0.get('driver_version', '—')}, "
          f"max SM clock {smi0.get('clocks.max.sm', '—')}, power limit {smi0.get('power.limit', '—')}",
          f"- torch {m.get('torch', '—')}, CUDA {m.get('torch_cuda', '—')}, cuDNN {m.get('cudnn', '—')}; "
          f"Python {m.get('python', '—')}",
          f"- CPU: {m.get('cpu', '—')} ({m.get('cores', '—')} cores)",
          f"- libraries: {', '.join(f'{k} {v}' for k, v in (m.get('libraries') or {}).items() if v)}"]
    roof = rep.get("roofline") or {}
    tf = roof.get("tflops") or {}
    if tf:
        L += [f"- measured dense matmul ({roof.get('method', '')}): "
              + ", ".join(f"{k} {v:.4g} TFLOP/s" for k, v in tf.items())
              + f"; {roof.get('flops_per_image_iteration', 0) / 1e9:.3f} GFLOP per image-iteration → bf16 roofline "
              f"{_f(roof.get('bf16_roofline_images_per_s_1000'), '{:.1f}')} images/s at {full} iterations"]
    L += ["", "## Phases", "", "| phase | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, p in (rep.get("phases") or {}).items():
        note = (p.get("error") or p.get("reason") or "").strip().splitlines()
        L.append(f"| {name} | {p.get('status')} | {_f(p.get('seconds'), '{:.1f}')} | "
                 f"{(note[-1] if note else '').replace('|', '/')[:160]} |")
    pt = rep.get("pytest")
    if pt:
        L += ["", "## pytest -m gpu", "",
              f"`{pt.get('command')}`: exit {pt.get('exit_code')}, {pt.get('passed')} passed, {pt.get('failed')} "
              f"failed, {pt.get('errors')} errors, {pt.get('skipped')} skipped ({pt.get('unexpected_skips')} for a "
              f"reason other than a missing package), {pt.get('deselected')} deselected, {pt.get('seconds')} s → "
              f"**{'OK' if pt.get('ok') else 'NOT OK'}**. Log: `{pt.get('log')}`."]
        for s in pt.get("skips", []):
            L.append(f"- skipped{'' if s['allowed'] else ' (**not allowed**)'}: `{s['test']}`: {s['reason'][:200]}")
        for f in pt.get("failures", []):
            L.append(f"- **{f['kind']}**: `{f['test']}`: {f['message'][:300]}")
    seed = rep.get("seed_loop")
    rows = rep.get("rows") or []
    if seed or rows:
        L += ["", "## Search step throughput", "",
              f"Images/s at {full} iterations (the seed's) and at {dflt} (the default model's) = batch / (seconds "
              f"per step × iterations); per-step time = (long − short search) / step difference, after a warm-up "
              f"search; the fixed cost per search (copies in, the final loss) is in its own column and in "
              f"\"@ {full} incl. fixed\". × seed: against the seed loop's images/s in this run. Roofline share: "
              f"achieved FLOP/s ({roof.get('flops_per_image_iteration', 0) / 1e9:.3f} GFLOP per image-iteration) "
              f"over the measured bf16 matmul peak.", "",
              f"| path | precision | CUDA graph | batch | ms / step | fixed ms / search | images/s @ {full} | "
              f"@ {dflt} | @ {full} incl. fixed | × seed | TFLOP/s | bf16 roofline share | peak MiB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        L.insert(len(L) - 3, "")
        L.insert(len(L) - 3, "Torch kernel choices (engine/backends/torch_backend.py, train/adjoint.py): portable = the "
                 "ops step.onnx holds; nhwc = channels-last; pad8 = the image padded to 8 channels before the two "
                 "convolutions that read it; masks = one kernel per activation backward; tuned = all three; "
                 "compile = torch.compile. The same values up to the order of float sums, and in bf16 leaky ReLU's slope "
                 "applied in fp32 (tests/test_fast_paths.py).")
        L.insert(len(L) - 3, "")
        for r in ([seed] if seed else []) + rows:
            if r.get("status") != "ok":
                L.append(f"| {r['name']} | {r.get('precision') or '—'} | {_graph(r.get('cuda_graph'))} | "
                         f"{r.get('batch') or '—'} | {r.get('status')}: "
                         f"{(r.get('reason') or r.get('error') or '').replace('|', '/')[:200]} |||||||||")
                continue
            L.append(f"| {r['name']} | {r['precision']} | {_graph(r.get('cuda_graph'))} | {r['batch']} | "
                     f"{_f(r['step_ms'], '{:.3f}')} | {_f(r.get('search_overhead_ms'), '{:.1f}')} | "
                     f"{_f(r['images_per_s_1000'])} | {_f(r['images_per_s_default'])} | "
                     f"{_f(r.get('images_per_s_1000_with_overhead'))} | {_f(r.get('ratio_vs_seed_loop'), '{:.1f}×')} | "
                     f"{_f(r.get('achieved_tflops'), '{:.1f}')} | {_f(r.get('share_of_bf16_roofline'), '{:.1%}')} | "
                     f"{_f(r.get('peak_memory_mib'), '{:.0f}')} |")
    ort = rep.get("onnxruntime_cuda")
    inst = rep.get("onnxruntime_gpu_install") or {}
    if ort is not None:
        L += ["", "## ONNX Runtime CUDA", "",
              ("available: " + ", ".join(ort.get("providers", []))) if ort.get("available") else
              f"**not measured**: {ort.get('reason')}. Wheel: {inst.get('reason') or inst.get('wheels')}."]
    for p in rep.get("profiles") or ([rep["profile"]] if rep.get("profile") else []):
        if p.get("error"):
            L += ["", f"## Profile: bf16 fast path, kernels {p.get('kernels')}", "", f"failed: {p['error']}"]
            continue
        L += ["", f"## Profile: bf16 fast path, kernels {p.get('kernels', 'portable')}, batch {p.get('batch')} "
              f"({p.get('time_basis')})", "",
              f"{p.get('reading')}.", "",
              f"Kernel time {_f(p.get('kernel_ms_per_step'), '{:.3f}')} ms per step (eager, profiled); "
              f"CUDA-graph step {_f(p.get('graph_step_ms'), '{:.3f}')} ms, "
              f"eager step {_f(p.get('eager_step_ms'), '{:.3f}')} ms; "
              f"all kernels {_f(p.get('all_kernels_tflops'), '{:.1f}')} TFLOP/s. Full table: `{p.get('file')}`.", "",
              "| group | ms / step | share |", "| --- | --- | --- |"]
        for g, x in (p.get("groups") or {}).items():
            L.append(f"| {g} | {x['ms_per_step']:.3f} | {x['share']:.1%} |")
        L += ["", "| top kernels | group | ms / step | share | calls / step |", "| --- | --- | --- | --- | --- |"]
        for k in (p.get("top") or [])[:12]:
            L.append(f"| `{k['name'][:90]}` | {k['group']} | {k['ms_per_step']:.3f} | {k['share']:.1%} | "
                     f"{k['calls_per_step']:.0f} |")
    e = rep.get("e2e")
    if e:
        L += ["", "## End to end: `gcomp complete`", "",
              f"{e['images']} synthetic {e['image_size']}×{e['image_size']} PNG faces "
              f"(generated in {e['generate_s']} s); "
              f"images/s = images / the job's seconds (listing, decode, search, composite, write; from "
              f"gcomp-summary.json); wall = the whole command including Python start and model load.", "",
              "| batch | I/O threads | iterations | status | done | failed | images/s | search s | job s | wall s | "
              "images/s (wall) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in e["runs"]:
            L.append(f"| {r['batch']} | {r.get('io_threads', 4)} | {r['iters']} | {r.get('status')} | {_f(r.get('done'), '{}')} | "
                     f"{_f(r.get('failed'), '{}')} | {_f(r.get('images_per_s'), '{:.1f}')} | "
                     f"{_f(r.get('search_seconds'), '{:.1f}')} | {_f(r.get('seconds'), '{:.1f}')} | "
                     f"{_f(r.get('wall_s'), '{:.1f}')} | {_f(r.get('images_per_s_wall'), '{:.1f}')} |")
        if e["runs"]:
            L.append(f"\nCommand: `{e['runs'][0]['command']}`")
    v = rep.get("verdict") or {}
    L += ["", "## Verdict", ""]
    b = v.get("best_bf16_cuda_graph")
    if b:
        L.append(f"- best torch bf16 CUDA-graph: **{b['images_per_s_1000']:.1f} images/s at {full} iterations** "
                 f"(batch {b['batch']}, kernels {b.get('kernels', 'portable')}), "
                 f"{_f(b.get('ratio_vs_seed_loop'), '{:.1f}')}× the seed loop, "
                 f"{_f(b.get('share_of_bf16_roofline'), '{:.1%}')} of the bf16 roofline")
    L.append(f"- pytest -m gpu: {'all pass' if v.get('pytest_all_pass') else 'NOT all pass'}")
    if rep.get("dry"):
        L.append("- dry run on CPU: not a GPU proof")
    else:
        L.append(f"- issue 17's bar (every GPU test passing, ≥ 300 images/s and ≥ 50× the seed loop): "
                 f"**{'met' if v.get('done_when_met') else 'not met'}**")
    return "\n".join(L) + "\n"


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
