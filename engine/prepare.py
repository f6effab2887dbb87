"""Preparing one image for the search: read it, find the face in a photo, draw its mask, make the
model-size target and context weights. Files and in-memory arrays go through the same steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import images
from .faces import crop_helps, find_face
from .jobs import Item
from .masks import MaskError, MaskSpec, context_weights, to_model_size


@dataclass
class Prepared:
    item: Item
    image: images.Image
    known: np.ndarray  # full resolution, 1 = known
    y: np.ndarray  # [C, S, S] in [-1, 1]
    w: np.ndarray | None  # [1, S, S] context weights (None: prepared for a job that does not search)
    known_small: np.ndarray | None = None  # [1, S, S]: the mask the search sees (1 = known)
    box: tuple[int, int, int] | None = None  # (x, y, side): the face crop the search sees, if any
    rgb_out: bool = False  # an in-memory RGB array: the result is RGB too (a file keeps its own layout)
    kind: str | None = None  # the mask kind it was prepared with (None: a mask file or array): what settings follow

    def weights(self, weighted: bool) -> np.ndarray:
        """[1, S, S]: the context loss's weights, made now if it was prepared without them (weights=False)."""
        return self.w if self.w is not None else _weights(self.known_small[0], weighted)


def _weights(small: np.ndarray, weighted: bool) -> np.ndarray:
    return context_weights(small, weighted)[None]


def prepare(item: Item, spec: MaskSpec, size: int, seed: int, weighted: bool, face: str = "off",
            log: Callable[[str], None] | None = None, blends: bool = True, weights: bool = True) -> Prepared:
    """A file: read it, then `prepare_image`."""
    return prepare_image(item, images.read(item.path), spec, size, seed, weighted, face, log, blends=blends,
                         weights=weights)


def prepare_image(item: Item, image: images.Image, mask: MaskSpec | np.ndarray, size: int, seed: int,
                  weighted: bool, face: str = "off", log: Callable[[str], None] | None = None,
                  rgb_out: bool = False, blends: bool = True, weights: bool = True) -> Prepared:
    """mask: a MaskSpec (kinds are drawn per image from `seed` and item.key), or a full-resolution array,
    1 = known. With face="auto", a mask kind on an image larger than the model applies to the face crop.
    blends: the job blends its fills (not --blend none): a hole too large for that is noted in `log`.
    weights: make the context loss's weights (a job that does not search never reads them: Settings.searches)."""
    h, w = image.shape
    images.check_min_side(w, h, item.key)  # a file was checked when read; an array (the Python API) is here
    box = None
    is_kind = isinstance(mask, MaskSpec) and mask.kind is not None
    if face == "auto" and is_kind and max(h, w) > size:
        box = find_face(image.rgb)
        if box is None and log is not None:
            log(f"note: {item.key}: no face found; completing the whole image")
        elif box is not None and not crop_helps(box, h, w):
            box = None  # the image is already a face crop: the mask kind applies to the whole image
    if isinstance(mask, np.ndarray):
        known = mask.astype(np.float32)
        region = image.rgb
    elif box is None:
        known = mask.known(item.key, image.shape, size, seed)
        region = image.rgb
    else:
        x, y, side = box
        known = np.ones((h, w), np.float32)  # the mask kind applies to the face crop
        known[y:y + side, x:x + side] = mask.known(item.key, (side, side), size, seed)
        region = image.rgb[y:y + side, x:x + side]
    if log is not None and blends:
        note = large_hole_note(item.key, known)
        if note:
            log(note)
    small = to_model_size(known if box is None else known[box[1]:box[1] + box[2], box[0]:box[0] + box[2]], size)
    if small.min() == 1:
        raise MaskError(f"{item.key}: the mask leaves nothing to fill (white / nonzero = fill)")
    return Prepared(item=item, image=image, known=known, y=images.to_model_input(region, size),
                    w=_weights(small, weighted) if weights else None, known_small=small[None], box=box, rgb_out=rgb_out,
                    kind=mask.kind if isinstance(mask, MaskSpec) else None)


#: measured peak memory for a hole too large for the exact blend (engine/blend.py EXACT_MAX: OpenCV's solver on
#: the hole's box, a Telea fill first, float blocks): ~160 bytes per hole pixel on top of ~40 per image pixel
#: (10000x10000 photo, no face, center hole: 6.8 GB; 5000x5000: 2.0 GB, 0.98 GB with --blend none)
LARGE_HOLE_BYTES = 160
LARGE_HOLE_NOTE = 4_000_000  # hole pixels above which the job says what the blend will cost


def large_hole_note(key: str, known: np.ndarray) -> str | None:
    """A note for a hole so large that blending it dominates the job's memory (None otherwise)."""
    n = int(known.size - np.count_nonzero(known >= 0.5))
    if n <= LARGE_HOLE_NOTE:
        return None
    return (f"note: {key}: the hole is {n / 1e6:.0f} megapixels: blending it takes ~{n * LARGE_HOLE_BYTES / 1e9:.1f} "
            f"GB more memory (--blend none needs none; a face crop, --face auto, makes the hole smaller)")
