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


#: Every candidate face is checked by a second cascade (OpenCV's alt2) on the box and a quarter of its side around
#: it, seen at VERIFY_WIDTH pixels. The default cascade alone fires on texture: on 12 textured 1600x1600 images (what
#: a large photo is detected at) with one CelebA face pasted at 5-20% of the side, it found all 12 faces and 49 false
#: ones (2-9% of the side), and its largest box, the one cropped, was a false face in 3 of the 12. alt2 kept all 12
#: faces and 9 of the 49 false ones (no wrong crop), and kept 181 of 181 faces found on 200 held-out faces pasted,
#: upscaled 4x, into a plain 1024x768 canvas.
VERIFY_WIDTH = 96
VERIFY_MARGIN = 0.25
DETECT_SIDE = 1600  # detection cost grows with pixels; larger images are searched at this size
#: the frontal-face cascade's step between window sizes. 1.2 found 3-4% fewer of 200 faces pasted into 1024x768
#: photos for 1.4-1.8x less time (benchmarks/results/face-detect-amd-epyc-avx2-2c.md): not a trade made silently
SCALE_FACTOR = 1.1


_local = threading.local()


def _cascade(name: str = "haarcascade_frontalface_default.xml") -> "cv2.CascadeClassifier":
    """One classifier per thread and cascade: detectMultiScale is not thread-safe (decoding runs in a pool)."""
    cache = _local.__dict__.setdefault("cascades", {})
    c = cache.get(name)
    if c is not None:
        return c
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise RuntimeError("this OpenCV has no Haar cascades (OpenCV 5 dropped them): "
                           "pip install 'opencv-python-headless<5'")
    c = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if c.empty():
        raise RuntimeError(f"OpenCV's face cascade file {name} could not be loaded")
    cache[name] = c
    return c


def _confirmed(gray: np.ndarray, box) -> bool:
    """Whether the second cascade also sees a face in the candidate box (x, y, w, h) of the grayscale image."""
    x, y, w, h = (int(v) for v in box)
    m = int(w * VERIFY_MARGIN)
    crop = gray[max(y - m, 0):y + h + m, max(x - m, 0):x + w + m]
    height = max(1, round(VERIFY_WIDTH * crop.shape[0] / crop.shape[1]))
    crop = cv2.resize(crop, (VERIFY_WIDTH, height), interpolation=cv2.INTER_AREA)
    least = int(VERIFY_WIDTH * 0.4)  # the face fills most of the crop: smaller hits are texture again
    found = _cascade("haarcascade_frontalface_alt2.xml").detectMultiScale(crop, scaleFactor=1.1, minNeighbors=3,
                                                                         minSize=(least, least))
    return len(found) > 0


def find_face(rgb: np.ndarray, min_size: int = 24, detect_side: int | None = None,
              scale_factor: float = SCALE_FACTOR) -> tuple[int, int, int] | None:
    """The square crop (x, y, side) around the largest face the second cascade confirms, kept inside the image;
    None if no face. detect_side: the longest side searched (None: DETECT_SIDE; larger images are shrunk to it);
    scale_factor: the cascade's step between sizes (benchmarks/face_detect.py measures both)."""
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:  # no face of min_size fits (and a 5000x3 strip would shrink to zero pixels below)
        return None
    scale, side_max = 1.0, detect_side or DETECT_SIDE
    if max(h, w) > side_max:  # faces stay findable at this size
        scale = side_max / max(h, w)
        small = (max(1, int(w * scale)), max(1, int(h * scale)))
        if min(small) < min_size:
            return None
        # shrink the colour image, then convert: no full-resolution grayscale copy of a large photo
        gray = cv2.cvtColor(cv2.resize(rgb, small, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    else:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    faces = _cascade().detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=5, minSize=(min_size, min_size))
    face = next((f for f in sorted(faces, key=lambda r: -r[2] * r[3]) if _confirmed(gray, f)), None)
    if face is None:
        return None
    bx, by, bw, _ = (v / scale for v in face)
    side = int(round(bw * CROP_SCALE))
    side = min(side, h, w)
    x = int(round(bx + CROP_OFFSET[0] * bw))
    y = int(round(by + CROP_OFFSET[1] * bw))
    x = min(max(x, 0), w - side)
    y = min(max(y, 0), h - side)
    return x, y, side
