"""Two `gcomp eval --json` reports compared face by face: B - A per mask kind, PSNR and SSIM.

    python -m gcomp.benchmarks.paired old.json new.json [--md]

Both reports must score the same faces (same data, --limit and --seed: eval's noise and masks are seeded
by the face's name). Per kind: mean difference ± its standard error, and the share of faces where B is
better. The pairing removes the face-to-face spread that dominates a comparison of the two means.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np


def paired(a: dict, b: dict) -> list[dict]:
    kinds_a = {r["mask"]: r for r in a["results"]}
    rows = []
    for rb in b["results"]:
        ra = kinds_a.get(rb["mask"])
        if ra is None:
            continue
        keys = sorted(set(ra["per_face"]) & set(rb["per_face"]))
        if len(keys) != len(rb["per_face"]) or len(keys) != len(ra["per_face"]):
            raise SystemExit(f"{rb['mask']}: the reports score different faces ({len(ra['per_face'])} vs "
                             f"{len(rb['per_face'])}, {len(keys)} in common)")
        row = {"mask": rb["mask"], "n": len(keys)}
        for i, metric in enumerate(("psnr", "ssim")):
            d = np.array([rb["per_face"][k][i] - ra["per_face"][k][i] for k in keys], dtype=np.float64)
            d = d[np.isfinite(d)]  # a perfect fill (PSNR inf) on both sides has no difference to score
            row[metric] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))),
                           "better": float((d > 0).mean())}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    a = ap.parse_args()
    rows = paired(json.load(open(a.a)), json.load(open(a.b)))
    print(f"| mask | n | PSNR B − A (share B better) | SSIM B − A (share B better) |\n| --- | --- | --- | --- |")
    for r in rows:
        p, s = r["psnr"], r["ssim"]
        print(f"| {r['mask']} | {r['n']} | {p['mean']:+.2f} ± {p['se']:.2f} dB ({p['better']:.0%}) | "
              f"{s['mean']:+.4f} ± {s['se']:.4f} ({s['better']:.0%}) |")


if __name__ == "__main__":
    main()
