"""Phase machine of the GPU check: GPU, driver, torch / CUDA / cuDNN, CPU, libraries, and the measured dense
matmul peaks (bf16, tf32, fp32) with the bf16 roofline of the model in images/s (see check.py)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time

from gcomp.benchmarks.flops import flops_per_iteration  # the repo root is on PYTHONPATH as gcomp


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
