"""`gcomp bench`: per-step latency and throughput of each backend against the seed's own loop.

The baseline is measured in the same process on the same inputs: PyTorch eager, a batch of 64,
the gradient copied to the host and the momentum update done in numpy every iteration, as the
seed's TensorFlow code does (sess.run -> numpy update -> feed back). Warm-up steps are excluded.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine.api import open_model
from ..engine.backends import FORMATS, NAMES, BackendError, backend_class, check_device
from ..engine.masks import make_mask
from ..engine.search import SearchParams, momentum_update
from .flops import flops_per_iteration  # noqa: F401 (tests and callers import it from here)
from .machine import cpu_model

BASELINE_BATCH = 64
PAUSE_S = 0.2  # interleaved runs: ONNX Runtime's and OpenVINO's idle worker threads spin for a while
# Dense peak FLOP/s by (device-name fragment, precision), from NVIDIA's data sheets (SXM parts).
PEAKS = {("H100", "fp32"): 67e12, ("H100", "tf32"): 495e12, ("H100", "fp16"): 989e12, ("H100", "bf16"): 989e12,
         ("H200", "fp32"): 67e12, ("H200", "tf32"): 495e12, ("H200", "fp16"): 989e12, ("H200", "bf16"): 989e12}


@dataclass
class Timing:
    name: str
    backend: str
    batch: int
    precision: str
    device: str
    steps_per_call: int = 1
    settings: dict = field(default_factory=dict)  # threads / streams given to the backend
    latencies_ms: list[float] = field(default_factory=list)  # per call
    stats: dict = field(default_factory=dict)

    def summarize(self, iters: int, flops_iter: float, peak: float | None, baseline_ips: float | None) -> None:
        lat = np.array(self.latencies_ms)
        per_step = lat / self.steps_per_call
        q = {f"p{p}": float(np.percentile(per_step, p)) for p in (90, 95, 99)}
        mean_s = float(per_step.mean()) / 1e3
        ips = self.batch / (mean_s * iters)  # images per second when each image needs `iters` steps
        achieved = flops_iter * self.batch / mean_s
        self.stats = {
            "step_ms": {"min": float(per_step.min()), "mean": float(per_step.mean()),
                        "median": float(np.median(per_step)), **q},
            "images_per_s": ips,
            "iters": iters,
            "speedup_vs_baseline": (ips / baseline_ips) if baseline_ips else 1.0,
            "flops_per_image_iteration": flops_iter,
            "achieved_flops": achieved,
            "peak_flops": peak,
            "share_of_peak": (achieved / peak) if peak else None,
        }


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
            "cores": os.cpu_count(), "gpu": None, "libraries": {}}
    for mod in ("numpy", "onnxruntime", "openvino", "torch", "cv2", "onnx"):
        try:
            info["libraries"][mod] = __import__(mod).__version__
        except Exception:
            pass
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return info


def _peak(device: str, precision: str, gpu: str | None) -> float | None:
    if device.startswith("cuda") and gpu:
        for (frag, prec), v in PEAKS.items():
            if frag in gpu and prec == precision:
                return v
    return None  # CPU peaks vary with clocks and ISA: reported as unknown


def synthetic_inputs(batch: int, size: int, zdim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.uniform(-1, 1, (batch, zdim)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    w = np.broadcast_to(make_mask("center", size), (batch, 1, size, size)).astype(np.float32)
    return z, y, w


class Run:
    """One configuration under test: `open()` loads it, each `call()` advances its search by one call
    (state fed back), `close()` releases it. Timed in blocks or interleaved by `time_runs`."""

    def __init__(self, timing: Timing, opener: Callable[[], tuple[Callable[[], None], Callable[[], None]]]):
        self.timing = timing
        self._opener = opener
        self.call = self.close = None

    def open(self) -> None:
        self.call, self.close = self._opener()


def seed_loop_run(checkpoint, device: str = "cpu") -> Run:
    """The seed's loop: eager forward/backward, gradient to host, numpy update, z back to the device."""

    def opener():
        import torch

        from ..train.checkpoint import load_models
        from ..train.reference import loss_and_grad

        cfg, G, D = load_models(checkpoint, device)
        hp = SearchParams.seed()
        z, y, w = synthetic_inputs(BASELINE_BATCH, cfg.size, cfg.zdim)
        yt, wt = torch.from_numpy(y).to(device), torch.from_numpy(w).to(device)
        state = [z, np.zeros_like(z)]

        def call():
            _, g = loss_and_grad(G, D, torch.from_numpy(state[0]).to(device), yt, wt, hp.lam)
            state[0], state[1] = momentum_update(state[0], state[1], g.cpu().numpy(), hp.lr, hp.momentum)

        return call, lambda: None

    return Run(Timing("seed loop", "baseline", BASELINE_BATCH, "fp32", device), opener)


def backend_run(open_be: Callable, timing: Timing) -> Run:
    """A model opened with gcomp.open_model, timed through its backend's step() contract; timing.steps_per_call
    is set from its unroll when opened."""

    def opener():
        model = open_be()
        be = model.backend
        z, y, w = synthetic_inputs(timing.batch, be.info.size, be.info.zdim)
        state = [z, np.zeros_like(z)]
        timing.steps_per_call = getattr(be, "unroll", 1)
        hp = SearchParams.seed()

        def call():
            state[0], state[1], _ = be.step(state[0], state[1], y, w, hp.lr, hp.momentum, hp.lam)

        return call, model.close

    return Run(timing, opener)


def time_runs(runs: list[Run], iters: int, warmup: int, rounds: int = 1, log=print) -> None:
    """Time each run for `iters` steps after `warmup` untimed calls. rounds = 1: one run after the other
    (one loaded at a time). rounds > 1: all loaded, then `rounds` passes over them, each timing its share
    of the calls, so a slow spell of a shared machine hits every run alike instead of one."""

    def timed(run: Run, n: int) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            run.call()
            run.timing.latencies_ms.append((time.perf_counter() - t0) * 1e3)

    def calls(run: Run) -> int:
        return max(1, iters // run.timing.steps_per_call)

    if rounds <= 1:
        for run in runs:
            log(f"{run.timing.name}: {iters} steps ...")
            run.open()
            try:
                for _ in range(warmup):
                    run.call()
                timed(run, calls(run))
            finally:
                run.close()
        return
    log(f"loading {len(runs)} runs; then {rounds} interleaved rounds of {iters} steps in all ...")
    try:
        for run in runs:
            run.open()
            for _ in range(warmup):
                run.call()
        for r in range(rounds):
            for run in runs:
                time.sleep(PAUSE_S)  # the previous run's thread pools stop spinning before this one is timed
                n = calls(run)
                timed(run, n * (r + 1) // rounds - n * r // rounds)
    finally:
        for run in runs:
            if run.close is not None:
                run.close()


def settings_grid(backend: str, threads=(None,), streams=(None,)) -> list[dict]:
    """The thread / stream settings to try for a backend: those it takes, every combination."""
    takes = backend_class(backend).options
    grid = [{}]
    for key, values in (("threads", threads), ("streams", streams)):
        values = [v for v in values if v is not None]
        if values and key in takes:
            grid = [g | {key: v} for g in grid for v in values]
    return grid


def precisions_of(backend: str) -> tuple[str, ...]:
    """What --precision can be for a backend: torch's compute and openvino's inference precision, as those
    backends declare them; onnxruntime and tensorrt time an export of that precision."""
    if backend == "torch":
        from ..engine.backends.torch_backend import PRECISIONS
    elif backend == "openvino":
        from ..engine.backends.openvino_backend import PRECISIONS
    else:
        from ..export.onnx_export import PRECISIONS
    return PRECISIONS


def why_not(backend: str, precision: str, device: str) -> str | None:
    """Why `backend` cannot be timed in `precision` on `device`; None where it can."""
    if precision not in precisions_of(backend):
        return f"the {backend} backend runs {', '.join(precisions_of(backend))}"
    if precision == "tf32" and not device.startswith("cuda"):
        return "tf32 is a CUDA mode"
    return None


def check_options(backends, batch_sizes, iters, precisions, device, warmup, threads=(None,), streams=(None,),
                  rounds=1) -> None:
    """Refuse a bad option before the export and the seed loop (~30 s), naming it; a run would otherwise
    fail late (a bad device, precision or thread count), crash (--iters 0) or time nothing (--batch-size 0)."""
    for opt, values in (("--backend", backends), ("--batch-size", batch_sizes), ("--precision", precisions)):
        if not values:
            raise ValueError(f"{opt}: give at least one value")
    for opt, values, least in (("--batch-size", batch_sizes, 1), ("--iters", [iters], 1), ("--warmup", [warmup], 0),
                               ("--rounds", [rounds], 1), ("--threads", threads, 1), ("--streams", streams, 1)):
        for v in values:
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                raise ValueError(f"{opt} must be >= {least}, got {v!r}")
    check_device(device)
    if device.startswith("cuda"):  # the seed loop would fail only once it loads the checkpoint
        import torch

        if not torch.cuda.is_available():
            raise BackendError(f"--device {device}, but CUDA is not available (torch {torch.__version__}); "
                               "use --device cpu")
    for name in backends:
        if name not in NAMES:
            raise BackendError(f"--backend {name!r}: unknown backend (choose from {', '.join(NAMES)})")
        devices = next(f.devices for f in FORMATS if f.name == name)
        if name != "tensorrt" and device.split(":")[0] not in devices:  # tensorrt always runs on CUDA
            raise BackendError(f"--device {device}: the {name} backend runs on {devices} only")
    for prec in precisions:  # a pair that does not exist is skipped; a precision no backend runs is a mistake
        reasons = [why_not(name, prec, device) for name in backends]
        if all(reasons):
            raise ValueError(f"--precision {prec}: {'; '.join(dict.fromkeys(reasons))}")


def bench(model=None, backends=("onnxruntime",), batch_sizes=(64,), iters: int = 20, precisions=("fp32",),
          device: str = "cpu", warmup: int = 3, workdir=None, log=print, threads=(None,), streams=(None,),
          rounds: int = 1) -> dict:
    """Run the baseline and each (backend, precision, batch, thread/stream setting); return the report.

    threads / streams: values to sweep (None: the backend's default) for backends that take them;
    each run's name then says its setting, and `best` in the report picks the fastest per
    (backend, precision, batch). rounds > 1 interleaves the runs (see time_runs).
    """
    check_options(backends, batch_sizes, iters, precisions, device, warmup, threads, streams, rounds)
    if workdir is not None:
        return _bench(model, backends, batch_sizes, iters, precisions, device, warmup, Path(workdir), log, threads,
                      streams, rounds)
    with tempfile.TemporaryDirectory(prefix="gcomp-bench-") as tmp:  # its checkpoint and exports: ~100 MB, removed
        return _bench(model, backends, batch_sizes, iters, precisions, device, warmup, Path(tmp), log, threads,
                      streams, rounds)


def _bench(model, backends, batch_sizes, iters, precisions, device, warmup, tmp: Path, log, threads, streams,
           rounds) -> dict:
    from ..train.checkpoint import load_models, save
    from ..train.model import ModelConfig, build

    if model is None:  # timings do not depend on the weights: the default architecture, random init
        ckpt = save(tmp / "random.pt", ModelConfig(), *build(ModelConfig()))
    else:
        ckpt = Path(model)
    cfg, _, _ = load_models(ckpt)
    flops = flops_per_iteration(cfg.size, cfg.zdim, cfg.gf, cfg.df, cfg.channels)
    machine = machine_info()
    runs = [seed_loop_run(ckpt, device)]
    for name in backends:
        for prec in precisions:
            if why_not(name, prec, device):
                log(f"skip {name} {prec}: {why_not(name, prec, device)}")
                continue
            target, options = ckpt, ({"precision": prec} if name == "torch" else {})
            if name in ("onnxruntime", "openvino", "tensorrt"):
                from ..export import export_model

                # openvino picks its inference precision itself, from the fp32 graph
                graph_prec = "fp32" if name == "openvino" else prec
                options = {"precision": prec} if name == "openvino" else {}
                target = tmp / f"onnx-{graph_prec}"
                if not (target / "step.onnx").exists():
                    log(f"exporting {graph_prec} ONNX graphs to {target} ...")
                    export_model(ckpt, target, precision=graph_prec, validate=False, trt=name == "tensorrt")
            for b in batch_sizes:
                for setting in settings_grid(name, threads, streams):
                    label = " ".join(f"{k[0]}{v}" for k, v in setting.items())  # e.g. "t2 s2"
                    timing = Timing(f"{name} {prec} b{b}{' ' + label if label else ''}", name, b, prec, device,
                                    settings=setting)
                    runs.append(backend_run(
                        lambda t=target, n=name, o={**options, **setting}: open_model(t, backend=n, device=device, **o),
                        timing))
    time_runs(runs, iters, warmup, rounds, log)
    timings = [r.timing for r in runs]
    timings[0].summarize(iters, flops, _peak(device, "fp32", machine["gpu"]), None)
    for t in timings[1:]:
        t.summarize(iters, flops, _peak(device, t.precision, machine["gpu"]), timings[0].stats["images_per_s"])
    return {"machine": machine, "model": {"source": str(model or "random init"), **asdict(cfg)},
            "iters": iters, "warmup": warmup, "rounds": rounds, "device": device,
            "runs": [asdict(t) for t in timings], "best": best_runs(timings), "swept": any(t.settings for t in timings)}


def best_runs(runs: list[Timing]) -> list[str]:
    """Names of the fastest run of each (backend, precision, batch) over the settings tried."""
    best: dict[tuple, Timing] = {}
    for r in runs[1:]:  # not the baseline
        key = (r.backend, r.precision, r.batch)
        if key not in best or r.stats["images_per_s"] > best[key].stats["images_per_s"]:
            best[key] = r
    return [r.name for r in best.values()]


def write_json(report: dict, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
