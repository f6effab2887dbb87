"""The README's before/after picture, made the way users' inputs arrive: noise in the hole.

    python -m gcomp.benchmarks.before_after [examples/astronaut.jpg] [examples/astronaut_before_after.jpg]

Left to right, around the face the job crops: the input with uniform noise in its hole, --blend none,
the default (`--blend auto`), the original. Nothing the model sees depends on the noise.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from gcomp import open_model
from gcomp.engine import images

ROOT = Path(__file__).resolve().parent.parent
TILE = 256


def main(src: str | Path = ROOT / "examples" / "astronaut.jpg",
         dst: str | Path = ROOT / "examples" / "astronaut_before_after.jpg", mask: str = "center") -> None:
    rgb = images.read(src).rgb
    with open_model() as model:
        p = model.prepare(rgb, mask)  # the face crop and the hole, in the photo's pixels
        x, y, side = p.box if p.box is not None else (0, 0, min(rgb.shape[:2]))
        # The crop is completed as the job completes it (the model sees the face crop, not the whole photo: a
        # hole given as an array is not cropped around a face), with the blend `auto` picks for this mask kind.
        crop, hole = rgb[y:y + side, x:x + side], p.known[y:y + side, x:x + side] < 0.5
        noisy = crop.copy()
        noisy[hole] = np.random.default_rng(0).integers(0, 256, (int(hole.sum()), 3), dtype=np.uint8)
        outs = [model.complete(noisy, hole, blend=b) for b in ("none", model.options(mask=mask).blend)]
    tiles = [cv2.resize(a, (TILE, TILE), interpolation=cv2.INTER_AREA) for a in (noisy, *outs, crop)]
    images.write(dst, cv2.cvtColor(images.grid(tiles, cols=4), cv2.COLOR_RGB2BGR))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:])
