"""Training step time by precision, in one run: `python -m gcomp.benchmarks.train_speed [--gf 64] [--steps 6]`.

One step is the seed's (one D update, two G updates, batch 64) on random images, with the precision and
memory format `gcomp train` would use (gcomp.train.loop.autocast_for / memory_format_for); the median of the
steps after the first (warm-up). Writes benchmarks/results/train-precision-<cpu>.{json,md} with --write.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from .machine import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"


def step_seconds(precision: str, gf: int, steps: int, batch: int = 64) -> list[float]:
    import torch

    from ..train.loop import autocast_for, memory_format_for, train_step
    from ..train.model import ModelConfig, build, sample_z

    torch.manual_seed(0)
    dev = torch.device("cpu")
    G, D = build(ModelConfig(gf=gf, df=gf))
    mem, autocast = memory_format_for(dev, precision), autocast_for(dev, precision)
    G.to(memory_format=mem)
    D.to(memory_format=mem)
    opt_G = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real = (torch.rand(batch, 3, 64, 64) * 2 - 1).contiguous(memory_format=mem)

    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(G, D, D, opt_G, opt_D, real, sample_z(batch, 100), autocast)
        times.append(time.perf_counter() - t)
    return times[1:]


def main(argv=None) -> dict:
    import torch

    from ..engine.cpu import cpu_has_native_bf16, cpu_kind

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gf", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--write", action="store_true", help="save benchmarks/results/train-precision-<cpu>.{json,md}")
    a = ap.parse_args(argv)
    res = {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "native_bf16": cpu_has_native_bf16(), "cores": os.cpu_count(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "gf": a.gf, "batch": 64,
           "date": time.strftime("%Y-%m-%d"), "runs": {}}
    for p in a.precisions.split(","):
        t = step_seconds(p, a.gf, a.steps)
        res["runs"][p] = {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "n": len(t)}
        print(f"{p}: median {statistics.median(t):.3f} s/step (min {min(t):.3f}, max {max(t):.3f}, n {len(t)})", flush=True)
    if "fp32" in res["runs"] and "bf16" in res["runs"]:
        res["bf16_speedup"] = res["runs"]["fp32"]["median_s"] / res["runs"]["bf16"]["median_s"]
        print(f"bf16 autocast{' + channels_last' if res['native_bf16'] else ''}: {res['bf16_speedup']:.2f}x fp32")
    if a.write:
        name = f"train-precision-{res['cpu_kind'].lower()}-{res['cores']}c"
        (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
        rows = "\n".join(f"| {p} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['n']} |"
                         for p, r in res["runs"].items())
        (RESULTS / f"{name}.md").write_text(
            f"# Training step time by precision ({res['date']})\n\n{res['cpu']} ({res['cpu_kind']}, {res['cores']} cores, "
            f"torch {res['torch']}, {res['threads']} threads); the seed's DCGAN at gf = df = {a.gf}, batch 64, one D and "
            f"two G updates per step, random images (no data loading); `python -m gcomp.benchmarks.train_speed --write`.\n\n"
            f"| precision | median s/step | min | max | steps |\n| --- | --- | --- | --- | --- |\n{rows}\n\n"
            + (f"bf16 autocast (channels_last on CPU): **{res['bf16_speedup']:.2f}x** fp32 in this run.\n"
               if "bf16_speedup" in res else ""))
    return res


if __name__ == "__main__":
    main()
