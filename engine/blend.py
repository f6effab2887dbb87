"""Blending the generated fill into the photo: Poisson (OpenCV's seamlessClone) or none."""
from __future__ import annotations

import cv2
import numpy as np

BLENDS = ("none", "poisson")
_PAD = 8  # seamlessClone ignores a mask that touches the border: work on a reflected margin


def blend(rgb: np.ndarray, fill: np.ndarray, known: np.ndarray, how: str) -> np.ndarray:
    """The fill to composite over the known pixels (HxWx3 uint8, same size as rgb).

    'poisson' solves for a fill whose gradients are G(z)'s and whose border matches the known
    pixels (Perez et al., as the paper does); known pixels are restored exactly afterwards anyway.
    """
    if how == "none":
        return fill
    if how != "poisson":
        raise ValueError(f"blend must be one of {BLENDS}, got {how!r}")
    hole = (known < 0.5).astype(np.uint8) * 255
    if not hole.any() or hole.all():
        return fill  # nothing to blend into, or no context to blend with
    pad = ((_PAD, _PAD), (_PAD, _PAD), (0, 0))
    dst = np.pad(rgb, pad, mode="reflect")
    src = np.pad(fill, pad, mode="reflect")
    m = np.pad(hole, pad[:2], mode="constant")
    x, y, w, h = cv2.boundingRect(m)
    center = (x + w // 2, y + h // 2)
    # seamlessClone places the mask's bounding box centred on `center`; for odd sizes that centre
    # is exact, for even ones OpenCV rounds the same way, so src and dst stay aligned.
    out = cv2.seamlessClone(src, dst, m, center, cv2.NORMAL_CLONE)
    return out[_PAD:-_PAD, _PAD:-_PAD]
