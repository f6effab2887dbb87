"""`gcomp bench`: per-step latency and throughput of each backend against the seed's own loop.

The baseline is measured in the same process on the same inputs, at every batch size benchmarked: PyTorch
eager, the gradient copied to the host and the momentum update done in numpy every iteration, as the seed's
TensorFlow code does (sess.run -> numpy update -> feed back). Each run's speed-up is against the baseline of
its own batch size. Warm-up steps are excluded. The timed call is a backend's step() (state through the host
each call), not its search loop: a setting such as io_binding or cuda_graph, reported as the backend has it,
is what its search() would use.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..engine.api import open_model
from ..engine.backends import FORMATS, NAMES, BackendError, backend_class, check_device
from ..engine.backends.exported import WEIGHTS_KEY, file_sha256, model_files
from ..engine.cpu import cpu_flags, cpu_has_native_bf16, cpu_kind, usable_cores
from ..engine.masks import make_mask
from ..engine.search import SearchParams, momentum_update
from .flops import flops_per_iteration  # noqa: F401 (tests and callers import it from here)
from .machine import cpu_model

BASELINE = "baseline"  # the seed loop's `backend` in the report
PERCENTILES = (90, 95, 99)
PAUSE_S = 0.2  # interleaved runs: ONNX Runtime's and OpenVINO's idle worker threads spin for a while
# the vector and matrix extensions, the flags that decide which kernels a runtime picks (the full list is ~100)
ISA_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c")
# Dense peak FLOP/s by (device-name fragment, precision), from NVIDIA's data sheets (SXM parts).
PEAKS = {("H100", "fp32"): 67e12, ("H100", "tf32"): 495e12, ("H100", "fp16"): 989e12, ("H100", "bf16"): 989e12,
         ("H200", "fp32"): 67e12, ("H200", "tf32"): 495e12, ("H200", "fp16"): 989e12, ("H200", "bf16"): 989e12}


@dataclass
class Timing:
    name: str
    backend: str
    batch: int
    precision: str  # as asked (--precision); settings["precision"] is what ran
    device: str
    steps_per_call: int = 1
    sweep: dict = field(default_factory=dict)  # the --threads / --streams values asked for (the name's label)
    settings: dict = field(default_factory=dict)  # as run, read from the open backend (run_settings)
    model: dict = field(default_factory=dict)  # weights_id as the loaded model says, sha256 of each file loaded
    latencies_ms: list[float] = field(default_factory=list)  # per call
    stats: dict = field(default_factory=dict)

    def summarize(self, iters: int, flops_iter: float, peak: float | None) -> None:
        """Everything but the speed-up, which needs the baseline's stats (batch_matched_speedups)."""
        per_step = np.array(self.latencies_ms) / self.steps_per_call
        mean_s = float(per_step.mean()) / 1e3
        achieved = flops_iter * self.batch / mean_s
        self.stats = {
            "step_ms": step_stats(per_step),
            "images_per_s": self.batch / (mean_s * iters),  # when each image needs `iters` steps
            "iters": iters,
            "flops_per_image_iteration": flops_iter,
            "achieved_flops": achieved,
            "peak_flops": peak,
            "share_of_peak": (achieved / peak) if peak else None,
        }


def step_stats(per_step_ms: np.ndarray) -> dict:
    """n (timed calls), min, max, mean, median, percentiles and standard deviation of the per-step times.
    stdev is the sample one (n - 1): the timed calls are a sample of the run's steady state."""
    x = per_step_ms
    return {"n": len(x), "min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
            "median": float(np.median(x)), **{f"p{p}": float(np.percentile(x, p)) for p in PERCENTILES},
            "stdev": float(x.std(ddof=1)) if len(x) > 1 else 0.0}


def batch_matched_speedups(timings: list[Timing]) -> None:
    """Each run's images/s over the seed loop's at the same batch size, timed in this invocation: against a
    baseline of another batch size the ratio would mix the batch's effect into the backend's."""
    base = {t.batch: t for t in timings if t.backend == BASELINE}
    for t in timings:
        b = base[t.batch]
        t.stats["speedup_vs_baseline"] = t.stats["images_per_s"] / b.stats["images_per_s"]
        t.stats["baseline"] = {"name": b.name, "batch": b.batch}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_model(),
            "cpu_kind": cpu_kind(), "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(ISA_FLAG_PREFIXES)),
            "native_bf16": cpu_has_native_bf16(),  # what gcomp decides from (GCOMP_CPU_BF16 overrides the flags)
            "cores": usable_cores(), "cpus_on_machine": os.cpu_count(), "gpu": None, "libraries": {}}
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


def files_loaded(backend: str, target: Path) -> list[Path]:
    """The model files a run loads: the checkpoint (the seed loop, torch) or an export's two graphs."""
    if backend in (BASELINE, "torch"):
        from ..train.checkpoint_file import resolve

        return [resolve(target)]
    return list(model_files(target, ".engine" if backend == "tensorrt" else ".onnx"))


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


def _threads_in_use(be) -> int | None:
    """The thread count the runtime itself reports: OpenVINO's compiled model and torch's intra-op pool (CPU)
    say; ONNX Runtime does not (its default, threads None, is one per physical core)."""
    if be.name == "openvino":
        return int(be.step_reqs[0].get_compiled_model().get_property("INFERENCE_NUM_THREADS"))
    if be.name == "torch" and not be.on_cuda:
        return be.torch.get_num_threads()
    return None


def _torch_math(torch, device: str) -> dict:
    """How the seed loop's PyTorch computes, as this process has it: its intra-op threads on CPU; on CUDA
    whether cuDNN may use TF32 for the convolutions (PyTorch's default: yes), so "fp32" is read with that."""
    if not device.startswith("cuda"):
        return {"threads": torch.get_num_threads()}
    try:
        return {"tf32_convolutions": bool(torch.backends.cudnn.allow_tf32)}
    except RuntimeError:  # torch >= 2.9 raises on the legacy flag once its new API was set in this process
        return {"tf32_convolutions": torch.backends.cudnn.conv.fp32_precision == "tf32"}


def run_settings(be, batch: int) -> dict:
    """What a run ran with, read from the open backend: its settings() (which resolve choices such as
    OpenVINO's inference precision), the batch, the steps per call, and what only the runtime knows."""
    s = {**be.settings(), "batch": batch, "steps_per_call": be.unroll}
    if "precision" not in s:  # an export run as stored (onnxruntime, tensorrt): the graph's precision
        s["precision"] = be.info.meta.get("precision")
        s["compute_precision"] = be.info.meta.get("compute_precision")  # bf16 exports store bf16, compute fp32
    threads = _threads_in_use(be)
    if threads is not None:
        s["threads"] = threads
    return s


class Run:
    """One configuration under test: `open()` loads it (and fills its timing's settings and model id), each
    `call()` advances its search by one call (state fed back), `close()` releases it. Timed in blocks or
    interleaved by `time_runs`."""

    def __init__(self, timing: Timing, opener: Callable[[], tuple[Callable[[], None], Callable[[], None]]]):
        self.timing = timing
        self._opener = opener
        self.call = self.close = None

    def open(self) -> None:
        self.call, self.close = self._opener()


def seed_loop_run(checkpoint, batch: int, device: str = "cpu") -> Run:
    """The seed's loop: eager forward/backward, gradient to host, numpy update, z back to the device."""
    timing = Timing(f"seed loop b{batch}", BASELINE, batch, "fp32", device)

    def opener():
        import torch

        from ..train.checkpoint import load_models, weights_id
        from ..train.reference import loss_and_grad

        cfg, G, D = load_models(checkpoint, device)
        hp = SearchParams.seed()
        z, y, w = synthetic_inputs(batch, cfg.size, cfg.zdim)
        yt, wt = torch.from_numpy(y).to(device), torch.from_numpy(w).to(device)
        state = [z, np.zeros_like(z)]
        timing.settings = {"name": BASELINE, "device": device, "precision": "fp32", "batch": batch,
                           "steps_per_call": 1, **_torch_math(torch, device)}
        timing.model[WEIGHTS_KEY] = weights_id(G, D)

        def call():
            _, g = loss_and_grad(G, D, torch.from_numpy(state[0]).to(device), yt, wt, hp.lam)
            state[0], state[1] = momentum_update(state[0], state[1], g.cpu().numpy(), hp.lr, hp.momentum)

        return call, lambda: None

    return Run(timing, opener)


def backend_run(open_be: Callable, timing: Timing) -> Run:
    """A model opened with gcomp.open_model, timed through its backend's step() contract; timing.steps_per_call,
    settings and weights id are read from the backend when opened."""

    def opener():
        model = open_be()
        be = model.backend
        z, y, w = synthetic_inputs(timing.batch, be.info.size, be.info.zdim)
        state = [z, np.zeros_like(z)]
        timing.steps_per_call = be.unroll
        timing.settings = run_settings(be, timing.batch)
        timing.model[WEIGHTS_KEY] = be.info.meta.get(WEIGHTS_KEY)
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
        if name == "tensorrt":  # before the graphs are exported for it
            from ..engine.backends.tensorrt_plan import TensorRTUnavailable, import_tensorrt

            try:
                import_tensorrt("--backend tensorrt")
            except TensorRTUnavailable as e:
                raise BackendError(str(e)) from None
    for prec in precisions:  # a pair that does not exist is skipped; a precision no backend runs is a mistake
        reasons = [why_not(name, prec, device) for name in backends]
        if all(reasons):
            raise ValueError(f"--precision {prec}: {'; '.join(dict.fromkeys(reasons))}")


def bench(model=None, backends=("onnxruntime",), batch_sizes=(64,), iters: int = 20, precisions=("fp32",),
          device: str = "cpu", warmup: int = 3, workdir=None, log=print, threads=(None,), streams=(None,),
          rounds: int = 1) -> dict:
    """Run the baseline at each batch size and each (backend, precision, batch, thread/stream setting);
    return the report.

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
    from ..train.checkpoint import load_models, save, weights_id
    from ..train.model import ModelConfig, build

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if model is None:  # timings do not depend on the weights: the default architecture, random init
        ckpt = save(tmp / "random.pt", ModelConfig(), *build(ModelConfig()))
    else:
        ckpt = Path(model)
    cfg, G, D = load_models(ckpt)
    flops = flops_per_iteration(cfg.size, cfg.zdim, cfg.gf, cfg.df, cfg.channels)
    machine = machine_info()
    digests: dict[Path, str] = {}  # each file hashed once however many runs load it

    def identify(timing: Timing, backend: str, target: Path) -> Timing:
        paths = files_loaded(backend, target)
        for p in paths:
            digests.setdefault(p, file_sha256(p))
        timing.model["sha256"] = {_label(p, tmp): digests[p] for p in paths}
        return timing

    runs = [seed_loop_run(ckpt, b, device) for b in batch_sizes]
    for run in runs:
        identify(run.timing, BASELINE, ckpt)
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
                    timing = identify(Timing(f"{name} {prec} b{b}{' ' + label if label else ''}", name, b, prec,
                                             device, sweep=setting), name, target)
                    runs.append(backend_run(
                        lambda t=target, n=name, o={**options, **setting}: open_model(t, backend=n, device=device, **o),
                        timing))
    time_runs(runs, iters, warmup, rounds, log)
    timings = [r.timing for r in runs]
    for t in timings:
        t.summarize(iters, flops, _peak(device, t.precision, machine["gpu"]))
    batch_matched_speedups(timings)
    checkpoint_file = files_loaded(BASELINE, ckpt)[0]
    return {"timestamp": started, "gcomp_version": __version__, "machine": machine,
            "model": {"source": str(model or "random init"), WEIGHTS_KEY: weights_id(G, D),
                      "sha256": digests[checkpoint_file], **asdict(cfg)},
            "iters": iters, "warmup": warmup, "rounds": rounds, "device": device,
            "runs": [asdict(t) for t in timings], "best": best_runs(timings), "swept": any(t.sweep for t in timings)}


def _label(path: Path, tmp: Path) -> str:
    """A file's name in the report: relative to the work folder (onnx-fp16/step.onnx), else its name."""
    return str(path.relative_to(tmp)) if path.is_relative_to(tmp) else path.name


def best_runs(runs: list[Timing]) -> list[str]:
    """Names of the fastest run of each (backend, precision, batch) over the settings tried."""
    best: dict[tuple, Timing] = {}
    for r in runs:
        if r.backend == BASELINE:
            continue
        key = (r.backend, r.precision, r.batch)
        if key not in best or r.stats["images_per_s"] > best[key].stats["images_per_s"]:
            best[key] = r
    return [r.name for r in best.values()]


def write_json(report: dict, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2))
