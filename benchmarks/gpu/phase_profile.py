"""Phase profile of the GPU check: torch.profiler over eager bf16 fast-path steps, the kernels by time and group,
and what bounds the bf16 step (see check.py)."""
from __future__ import annotations

import json
import re
import time
import traceback
from pathlib import Path

from gcomp.benchmarks.flops import flops_per_iteration  # the repo root is on PYTHONPATH as gcomp

from common import _sync, ensure_checkpoint, search_inputs


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
