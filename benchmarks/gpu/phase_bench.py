"""Phase bench of the GPU check: the seed-faithful loop, the autograd reference and the torch fast path (each
precision, with and without CUDA graphs, each kernel choice and lever), ONNX Runtime CUDA where it imports,
TensorRT's status; every row's per-step time and images/s (see check.py)."""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from gcomp.benchmarks.flops import flops_per_iteration  # the repo root is on PYTHONPATH as gcomp

from common import _sync, ensure_checkpoint, import_reference, search_inputs, tail, write_json


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
