"""What gcomp writes, hashed, for fixed settings: run it before and after a change that must not change outputs.

    python -m gcomp.benchmarks.output_hashes OUT_BEFORE          # on the old commit
    python -m gcomp.benchmarks.output_hashes OUT_AFTER           # on the new one
    python -m gcomp.benchmarks.output_hashes --compare OUT_BEFORE OUT_AFTER

Both bundled models on ONNX Runtime (pinned: `auto` picks OpenVINO bf16 on CPUs with bf16, whose bytes differ),
over a small synthetic folder (noise images, two folders, one larger JPEG): four `complete_files` jobs (the
model's defaults; a 5-iteration search with 2 restarts; --blend none with random starts; a grid mask with a
weighted blend) and `complete_many` / `complete_prepared` on arrays. It records each output file's sha256 and
each job's summary settings (all but the input and output paths) in OUT/hashes.json. Byte identity holds on one
machine and one set of library versions: compare runs made on the same machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np

JOBS = {"defaults": {}, "search": dict(mask="random:0.5", iters=5, restarts=2, blend="poisson", batch_size=3),
        "no-blend": dict(mask="half", blend="none", iters=2, init="random"),
        "grid": dict(mask="grid", blend="poisson:0.3", seed=4)}


def _inputs(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(10):
        cv2.imwrite(str(root / ("sub" if i % 2 else ".") / f"{i}.png"), rng.integers(0, 256, (64, 64, 3), np.uint8))
    cv2.imwrite(str(root / "big.jpg"), rng.integers(0, 256, (150, 120, 3), np.uint8))


def _digest(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def run(out: Path, models: tuple[str, ...] = ("small", "default")) -> dict:
    import gcomp

    src = out / "input"
    _inputs(src)
    res: dict = {}
    for model in models:
        with gcomp.open_model(model, backend="onnxruntime") as m:
            for name, kw in JOBS.items():
                d = out / f"{model}-{name}"
                m.complete_files(src, d, log=lambda s: None, overwrite=True, **kw)
                res[f"{model}-{name}"] = {str(p.relative_to(d)): _digest(p.read_bytes()) for p in sorted(d.rglob("*"))
                                          if p.suffix in (".png", ".jpg")}
                settings = json.loads((d / "gcomp-summary.json").read_text())["settings"]
                res[f"{model}-{name}-settings"] = {k: _portable(v) for k, v in settings.items()
                                                   if k not in ("input", "output")}
            rng = np.random.default_rng(1)
            arrays = [rng.integers(0, 256, (64, 64, 3), np.uint8) for _ in range(4)]
            outs = m.complete_many(arrays, ["center", "half", "center", "strokes"], iters=3)
            res[f"{model}-arrays"] = [_digest(o.tobytes()) for o in outs]
            prepared = [m.prepare(a, "center", name=f"n{i}") for i, a in enumerate(arrays)]
            outs, stats = m.complete_prepared(prepared, gcomp.CompleteOptions(search=gcomp.SearchParams(iters=4)))
            res[f"{model}-prepared"] = [_digest(o.tobytes()) for o in outs] + [stats["loss"]]
    (out / "hashes.json").write_text(json.dumps(res, indent=1, sort_keys=True))
    return res


def _portable(value):
    """A path inside the gcomp being run (the bundled model, its encoder) as "<gcomp>/...": two checkouts of the same
    settings (a worktree of the old commit and the new one) compare equal."""
    import gcomp

    root = str(Path(gcomp.__file__).resolve().parent)
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return "<gcomp>" + value[len(root):]
    return value


def compare(a: Path, b: Path) -> list[str]:
    """The entries that differ between two runs' hashes.json."""
    x, y = (json.loads((p / "hashes.json").read_text()) for p in (a, b))
    return sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="+", help="a folder to write (one), or two runs' folders with --compare")
    ap.add_argument("--compare", action="store_true")
    a = ap.parse_args(argv)
    if a.compare:
        if len(a.out) != 2:
            ap.error("--compare takes two folders")
        differ = compare(Path(a.out[0]), Path(a.out[1]))
        print("identical" if not differ else "differ: " + ", ".join(differ))
        return 1 if differ else 0
    res = run(Path(a.out[0]))
    print(f"{len(res)} entries in {Path(a.out[0]) / 'hashes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
