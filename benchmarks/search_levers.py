"""The seed's search re-measured lever by lever on one model, paired per face against 0 iterations.

    python -m gcomp.benchmarks.search_levers ../shared/data/celeba64/val.tar --model default --limit 100 \\
        --masks center,half,random,strokes --json benchmarks/results/levers.json

Each setting runs through `gcomp eval`'s path (evaluate(): noise in the hole, `complete_files`, the written files
scored), with the model's recommended settings for what a lever leaves unset (blend included, per mask kind).
Levers: iterations (10, 25, 50, 100, 300), lr (1e-4, 1e-3 at 100 iterations), lambda (0, 1), the paper's weighted
context loss, 2 restarts; each scored against 0 iterations on the same faces (mean of B - A per face, its standard
error, and the images/s the setting ran at).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from ..engine.api import open_model
from ..engine.evaluate import evaluate
from ..engine.options import CompleteOptions
from ..engine.search import SearchParams

#: (name, SearchParams fields, CompleteOptions fields); iters 0 first: the baseline
LEVERS = [("0 iterations", {"iters": 0}, {}),
          *[(f"{n} iterations", {"iters": n, "patience": 0}, {}) for n in (10, 25, 50, 100, 300)],
          ("100 it., early stop 20 (the recommended search)", {"iters": 100}, {}),
          ("100 it., lr 1e-4", {"iters": 100, "lr": 1e-4}, {}),
          ("100 it., lr 1e-3", {"iters": 100, "lr": 1e-3}, {}),
          ("100 it., lambda 0", {"iters": 100, "lam": 0.0}, {}),
          ("100 it., lambda 1", {"iters": 100, "lam": 1.0}, {}),
          ("100 it., weighted loss", {"iters": 100, "weighted": True}, {}),
          ("100 it., 2 restarts", {"iters": 100}, {"restarts": 2})]


def paired(a: dict, b: dict) -> dict:
    """B - A per face over the faces both scored: mean and standard error of PSNR and SSIM, share B better."""
    keys = sorted(set(a) & set(b))
    d = np.array([[b[k][0] - a[k][0], b[k][1] - a[k][1]] for k in keys])
    se = d.std(0, ddof=1) / math.sqrt(len(d)) if len(d) > 1 else np.zeros(2)
    return {"n": len(d), "psnr": float(d[:, 0].mean()), "psnr_se": float(se[0]), "ssim": float(d[:, 1].mean()),
            "ssim_se": float(se[1]), "better": float((d[:, 0] > 0).mean())}


def run(data, model=None, masks=("center", "half"), limit=100, levers=None, backend="auto", log=print) -> dict:
    rows = []
    with open_model(model, backend=backend) as m:
        for name, search, extra in levers or LEVERS:
            opts = CompleteOptions(search=SearchParams(**search), **extra)
            res, _ = evaluate(m, data, masks, opts, limit, log=lambda msg: None)
            rows.append({"lever": name, "search": search, **extra,
                         "kinds": {r.mask: {"scores": r.scores["gcomp"], "images_per_s": r.images_per_s,
                                            "blend": r.blend, "per_face": r.per_face} for r in res}})
            base = rows[0]["kinds"]
            for k, v in rows[-1]["kinds"].items():
                v["vs_0_iterations"] = paired(base[k]["per_face"], v["per_face"])
            log(f"{name}: " + ", ".join(
                f"{k} {v['scores']['psnr']:.2f}/{v['scores']['ssim']:.3f} ({v['vs_0_iterations']['psnr']:+.2f} dB, "
                f"{v['images_per_s']:.1f} img/s)" for k, v in rows[-1]["kinds"].items()))
        backend_name = m.name
    return {"data": str(data), "model": str(model or "default"), "backend": backend_name, "limit": limit,
            "masks": list(masks), "rows": rows}


def table(report: dict) -> str:
    masks = report["masks"]
    lines = ["| lever | " + " | ".join(f"{k}: PSNR / SSIM (vs 0 it., dB) | img/s" for k in masks) + " |",
             "| --- " * (1 + 2 * len(masks)) + "|"]
    for r in report["rows"]:
        cells = []
        for k in masks:
            v = r["kinds"][k]
            d = v["vs_0_iterations"]
            cells += [f"{v['scores']['psnr']:.2f} / {v['scores']['ssim']:.3f} ({d['psnr']:+.2f} ± {d['psnr_se']:.2f})",
                      f"{v['images_per_s']:.1f}"]
        lines.append(f"| {r['lever']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--masks", default="center,half")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    report = run(a.data, a.model, tuple(a.masks.split(",")), a.limit, backend=a.backend)
    print(table(report))
    if a.json:
        for r in report["rows"]:  # per-face scores stay in memory: the JSON keeps the means and pairs
            for v in r["kinds"].values():
                v.pop("per_face")
        Path(a.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
