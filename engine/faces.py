"""Finding the face in a photo, so a model trained on aligned face crops sees what it knows.

OpenCV's Haar frontal-face cascade (it ships inside opencv-python-headless 4.x) finds the face;
the crop around it is placed the way the CelebA 64x64 crops sit relative to that cascade's box:
measured on 190 of 200 held-out faces pasted, upscaled 4x, into a 1024x768 canvas, the crop's
side is 0.927 of the box's and its corner is 0.037 / 0.102 of the box's side right of / below
the box's corner (standard deviations 0.05).
"""
from __future__ import annotations

import threading

import cv2
import numpy as np

CROP_OFFSET = (0.037, 0.102)
CROP_SCALE = 0.927
FACE_MODES = ("auto", "off")
#: --face auto crops only where the crop is under this fraction of the image's shorter side. An image that is
#: already a face crop (aligned faces at any resolution: the crop the cascade implies is 0.7-1.0 of the image)
#: would gain at most 2x resolution from cropping, and the crop would move the hole away from where the mask
#: kind puts it (measured: 2 of 16 aligned 64x64 faces, completed with a 32-px model, had their hole moved).
#: A photo whose face is under half of its shorter side gains more than 2x, and there the mask kind is meant
#: for the face, not the whole photo.
MAX_CROP_FRACTION = 0.5


def crop_helps(box: tuple[int, int, int], h: int, w: int) -> bool:
    """Whether completing the face crop `box` (x, y, side) beats completing the whole h x w image."""
    return box[2] < MAX_CROP_FRACTION * min(h, w)


_local = threading.local()


def _cascade() -> "cv2.CascadeClassifier":
    """One classifier per thread: detectMultiScale is not thread-safe (decoding runs in a pool)."""
    c = getattr(_local, "cascade", None)
    if c is not None:
        return c
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise RuntimeError("this OpenCV has no Haar cascades (OpenCV 5 dropped them): "
                           "pip install 'opencv-python-headless<5'")
    c = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if c.empty():
        raise RuntimeError("OpenCV's frontal-face cascade file could not be loaded")
    _local.cascade = c
    return c


def find_face(rgb: np.ndarray, min_size: int = 24) -> tuple[int, int, int] | None:
    """The square crop (x, y, side) around the largest face, kept inside the image; None if no face."""
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:  # no face of min_size fits (and a 5000x3 strip would shrink to zero pixels below)
        return None
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = 1.0
    if max(h, w) > 1600:  # detection cost grows with pixels; faces stay findable at this size
        scale = 1600 / max(h, w)
        small = (max(1, int(w * scale)), max(1, int(h * scale)))
        if min(small) < min_size:
            return None
        gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
    faces = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
    if len(faces) == 0:
        return None
    bx, by, bw, _ = (v / scale for v in max(faces, key=lambda r: r[2] * r[3]))
    side = int(round(bw * CROP_SCALE))
    side = min(side, h, w)
    x = int(round(bx + CROP_OFFSET[0] * bw))
    y = int(round(by + CROP_OFFSET[1] * bw))
    x = min(max(x, 0), w - side)
    y = min(max(y, 0), h - side)
    return x, y, side
