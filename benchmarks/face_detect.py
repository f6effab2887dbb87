"""How fast and how well `--face auto` finds the face in a photo, at several detection sizes.

    python -m gcomp.benchmarks.face_detect ../shared/data/celeba64/val.tar [--n 200] [--sides 1600,800,640,512]

Each of N aligned 64x64 face crops (a tar of images or a folder) is upscaled to a side drawn log-uniformly from
--face-sizes (default 40-320 px) and pasted at a random place into a 1024x768 canvas, either plain (a gradient) or
textured (blurred noise: where the frontal-face cascade costs the most and fires falsely); the pasted square is
the crop the model knows, so it is the truth. For each --sides value (the longest side the detector searches:
engine/faces.py DETECT_SIDE), and for each --scale-factors value at the largest side (the cascade's step between
window sizes, SCALE_FACTOR), engine.faces.find_face on every canvas: its milliseconds, whether it returned a
crop overlapping the truth by IoU >= 0.5 ("found"), a wrong crop (IoU < 0.5) or none, and the mean IoU of the
found ones; per face-size band. No image is written.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from ..engine.faces import SCALE_FACTOR, find_face
from ..engine.evaluate import read_images

CANVAS = (768, 1024)  # h, w


def load_faces(src: Path, n: int) -> list[np.ndarray]:
    """The first n images of a tar or folder (gcomp eval's reader), as BGR arrays."""
    return [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for _, rgb in read_images(src, limit=n)]


def canvases(faces: list[np.ndarray], kind: str, sizes: tuple[int, int], seed: int = 0):
    """(rgb canvas, truth (x, y, side)) per face."""
    rng = np.random.default_rng(seed)
    h, w = CANVAS
    for f in faces:
        s = min(int(round(np.exp(rng.uniform(np.log(sizes[0]), np.log(sizes[1]))))), h - 1)
        if kind == "plain":
            bg = np.empty((h, w, 3), np.uint8)
            bg[:] = np.linspace(60, 190, w, dtype=np.uint8)[None, :, None]
        else:
            bg = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), np.uint8), (0, 0), 8)
            bg = cv2.normalize(bg, None, 30, 220, cv2.NORM_MINMAX)
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        bg[y:y + s, x:x + s] = cv2.resize(f, (s, s), interpolation=cv2.INTER_CUBIC)
        yield cv2.cvtColor(bg, cv2.COLOR_BGR2RGB), (x, y, s)


def iou(a, b) -> float:
    ax, ay, asz = a
    bx, by, bsz = b
    ix = max(0, min(ax + asz, bx + bsz) - max(ax, bx))
    iy = max(0, min(ay + asz, by + bsz) - max(ay, by))
    inter = ix * iy
    return inter / (asz * asz + bsz * bsz - inter)


BANDS = ((0, 64), (64, 128), (128, 10_000))


def run(src, n=200, sides=(1600, 800, 640, 512), kinds=("plain", "texture"), sizes=(40, 320), scale_factors=(1.1,),
        log=print) -> dict:
    faces = load_faces(Path(src), n)
    if not faces:
        raise ValueError(f"no images in {src}")
    res = {"source": str(src), "faces": len(faces), "canvas": list(CANVAS), "face_sizes": list(sizes), "runs": []}
    find_face(next(canvases(faces[:1], kinds[0], sizes))[0])  # the cascades load on first use: not in a timing
    for kind in kinds:
        cases = list(canvases(faces, kind, sizes))
        for side, sf in [(side, SCALE_FACTOR) for side in sides] + [(max(sides), f) for f in scale_factors
                                                                      if f != SCALE_FACTOR]:
            rows = []
            for rgb, truth in cases:
                t0 = time.perf_counter()
                box = find_face(rgb, detect_side=side, scale_factor=sf)
                ms = (time.perf_counter() - t0) * 1e3
                rows.append({"truth": truth, "box": box, "ms": ms, "iou": iou(box, truth) if box else 0.0})
            run = {"kind": kind, "detect_side": side, "scale_factor": sf, "ms_mean": float(np.mean([r["ms"] for r in rows])),
                   "bands": {}}
            for lo, hi in BANDS:
                band = [r for r in rows if lo <= r["truth"][2] < hi]
                found = [r for r in band if r["iou"] >= 0.5]
                run["bands"][f"{lo}-{hi}"] = {
                    "n": len(band), "found": len(found), "wrong": sum(1 for r in band if r["box"] and r["iou"] < 0.5),
                    "none": sum(1 for r in band if not r["box"]),
                    "mean_iou_found": float(np.mean([r["iou"] for r in found])) if found else None}
            res["runs"].append(run)
            log(f"{kind} side {side}, scale factor {sf}: {run['ms_mean']:.0f} ms per photo; " + "; ".join(
                f"{k} px: {b['found']}/{b['n']} found, {b['wrong']} wrong, {b['none']} none, IoU "
                f"{b['mean_iou_found'] or 0:.3f}" for k, b in run["bands"].items()))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("faces", help="a tar or folder of aligned face crops (e.g. ../shared/data/celeba64/val.tar)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--sides", default="1600,800,640,512")
    ap.add_argument("--kinds", default="plain,texture")
    ap.add_argument("--scale-factors", default="1.1,1.2,1.3", help="the cascade's steps, at the largest side")
    ap.add_argument("--face-sizes", default="40,320", help="MIN,MAX pasted face side in pixels")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    lo, hi = (int(v) for v in a.face_sizes.split(","))
    res = run(a.faces, a.n, tuple(int(v) for v in a.sides.split(",")), tuple(a.kinds.split(",")), (lo, hi),
              tuple(float(v) for v in a.scale_factors.split(",")))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
