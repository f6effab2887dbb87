"""Masks: which pixels are known. Convention inside gcomp: 1 = known, 0 = to fill (the seed's M).

Mask files follow IOPaint's convention instead: white (> 127) = fill, black = keep.
Kind masks are drawn at the model's resolution and scaled (nearest) to the image, so the search
sees the same hole whatever the photo's size. Random kinds are seeded per image, from the seed and
the image's name, so an image's mask never depends on its batch, shard or worker.
"""
from __future__ import annotations

import math
import os
import zlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import images

KINDS = ("center", "random", "left", "right", "top", "bottom", "grid", "lowres", "pattern", "strokes", "full")
ALIASES = {"half": "left"}  # the paper's "half" mask is the left half
RANDOM_KINDS = ("random", "pattern", "strokes")  # drawn per image (from the seed and its name); the rest are fixed
DEFAULT_PARAM = {"center": 0.25, "random": 0.8, "grid": 4, "lowres": 4, "pattern": 0.25, "strokes": 4}
WEIGHT_WINDOW = 7  # the paper's neighbourhood for the weighted context loss


def mask_kind(spec: str | None) -> str | None:
    """The kind a --mask value names ("half" and "half:..." -> "left"), None for a mask file, folder or array:
    what a model's per-mask-kind recommendations are looked up by. Reads no file."""
    if not isinstance(spec, str):
        return None
    name = spec.partition(":")[0]
    name = ALIASES.get(name, name)
    return name if name in KINDS else None


class MaskError(ValueError):
    """A mask that cannot be used for an image (missing, unreadable, wrong size)."""


def image_rng(seed: int, key: str, stream: int = 0) -> np.random.Generator:
    """A generator tied to (seed, image name, stream): identical in any batch, shard or process."""
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8")), stream])


def make_mask(kind: str, size: int, param: float | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """A size x size float32 mask, 1 = known."""
    if kind not in KINDS:
        raise MaskError(f"unknown mask kind {kind!r}; choose from {', '.join(KINDS)} or give a mask file/folder")
    p = DEFAULT_PARAM.get(kind) if param is None else param
    if kind in RANDOM_KINDS and rng is None:
        rng = np.random.default_rng(0)
    m = np.ones((size, size), np.float32)
    h = size // 2
    if kind == "center":
        if not 0 < p < 0.5:
            raise MaskError(f"center scale must be in (0, 0.5), got {p}")
        lo, hi = int(size * p), int(size * (1 - p))
        m[lo:hi, lo:hi] = 0
    elif kind == "random":
        if not 0 <= p <= 1:
            raise MaskError(f"random fraction missing must be in [0, 1], got {p}")
        m[rng.random((size, size)) < p] = 0
    elif kind == "left":
        m[:, :h] = 0
    elif kind == "right":
        m[:, h:] = 0
    elif kind == "top":
        m[:h, :] = 0
    elif kind == "bottom":
        m[h:, :] = 0
    elif kind == "grid":  # keep every p-th row and column (lines), fill the cells between them
        step = _step(kind, p)
        m[:] = 0
        m[::step, :] = 1
        m[:, ::step] = 1
    elif kind == "lowres":  # keep one pixel in p x p: the seed's low-resolution case
        step = _step(kind, p)
        m[:] = 0
        m[::step, ::step] = 1
    elif kind == "pattern":  # random blobs, like the paper's (Context Encoder) pattern masks
        m = _blobs(size, p, rng)
    elif kind == "strokes":  # free-form brush strokes, like those users draw over what they want removed
        m = _strokes(size, _count(kind, p), rng)
    return m


def _step(kind: str, p: float) -> int:
    if not math.isfinite(p) or p != int(p) or p < 2:  # int(nan) and int(inf) would raise Python's own errors
        raise MaskError(f"{kind} step must be an integer >= 2, got {p:g}")
    return int(p)


MAX_COUNT = 1000  # strokes: ~100 already cover a whole image; a count far past that only takes time


def _count(kind: str, p: float) -> int:
    if not math.isfinite(p) or p != int(p) or not 1 <= p <= MAX_COUNT:
        raise MaskError(f"{kind} count must be an integer from 1 to {MAX_COUNT}, got {p:g}")
    return int(p)


def _strokes(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` brush strokes: polylines of 3-6 segments in random directions, each segment 1/8-1/4 of the image
    long, the brush 1/16-1/8 of it wide, round joints (the free-form masks of DeepFill v2, drawn smaller)."""
    hole = np.zeros((size, size), np.uint8)
    for _ in range(n):
        x, y = rng.uniform(0, size, 2)
        width = max(1, int(round(rng.uniform(size / 16, size / 8))))
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(3, 7))):
            angle += rng.uniform(-np.pi / 2, np.pi / 2)
            length = rng.uniform(size / 8, size / 4)
            nx = float(np.clip(x + length * np.cos(angle), 0, size - 1))
            ny = float(np.clip(y + length * np.sin(angle), 0, size - 1))
            cv2.line(hole, (int(x), int(y)), (int(nx), int(ny)), 1, width, cv2.LINE_8)
            x, y = nx, ny
    return (1 - hole).astype(np.float32)


def _blobs(size: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random noise thresholded so that `fraction` of the pixels are missing."""
    if not 0 < fraction < 1:
        raise MaskError(f"pattern fraction missing must be in (0, 1), got {fraction}")
    coarse = rng.random((max(size // 8, 2),) * 2).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), size / 32)
    thresh = np.quantile(field, 1 - fraction)
    return (field < thresh).astype(np.float32)


def context_weights(known: np.ndarray, weighted: bool) -> np.ndarray:
    """Per-pixel weights of the context loss: the mask itself, or the paper's 7x7 weighting.

    Weighted (Yeh et al., eq. 2): a known pixel weighs the fraction of unknown pixels in the 7x7
    window around it (windows cut at the image border count only pixels inside); holes weigh 0.
    """
    known = known.astype(np.float32)
    if not weighted:
        return known
    k = np.ones((WEIGHT_WINDOW, WEIGHT_WINDOW), np.float32)
    holes = cv2.filter2D(1 - known, -1, k, borderType=cv2.BORDER_CONSTANT)
    count = cv2.filter2D(np.ones_like(known), -1, k, borderType=cv2.BORDER_CONSTANT)
    return (known * holes / count).astype(np.float32)


def to_model_size(known: np.ndarray, size: int) -> np.ndarray:
    """Shrink a full-resolution mask for the search: a pixel is known only if all it covers is known."""
    if known.shape == (size, size):
        return known.astype(np.float32)
    small = cv2.resize(known.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return (small > 0.999).astype(np.float32)


def read_mask_file(path: str | Path, key: str | None = None) -> np.ndarray:
    """A mask image (any format OpenCV reads), white = fill. Returns 1 = known. `key`: the image it is for,
    which the error then starts with, as every per-image error does."""
    try:
        data = np.frombuffer(images.read_bytes(path), np.uint8)  # a FIFO or a device is refused, not waited on
    except images.ImageError as e:
        raise MaskError(f"{key}: mask {e}" if key else f"mask {e}") from None
    try:
        with images.opencv_quiet():  # grayscale: OpenCV applies the EXIF orientation, as images.decode does
            img = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    except cv2.error as e:
        raise MaskError(f"{key}: mask {path} is not a readable image ({images.opencv_reason(e)})" if key else
                        f"{path}: mask is not a readable image ({images.opencv_reason(e)})") from None
    if img is None:
        raise MaskError(f"{key}: mask {path} is not a readable image" if key else
                        f"{path}: mask is not a readable image")
    return (img <= 127).astype(np.float32)


#: what a mask folder's files may be: the formats gcomp completes and the others OpenCV reads
MASK_SUFFIXES = (*images.SUFFIXES, ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".pfm", ".sr", ".ras", ".jp2", ".exr",
                 ".hdr", ".pic", ".avif", ".gif")
FIXED_CACHED = 4  # image sizes whose fixed mask a MaskSpec keeps (a folder of photos of one size needs one)


@dataclass
class MaskSpec:
    """What `--mask` said: a kind (with an optional parameter) or a file/folder of mask images.

    A mask that is the same for every image of a size (a fixed kind such as center, or one mask file) is made once
    per size and shared, read-only: a job's images do not each draw it again or decode the file again."""

    kind: str | None = None
    param: float | None = None
    path: Path | None = None
    _fixed: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __getstate__(self):  # pickled for Ray's workers: the lock cannot travel, and the cache need not
        return {"kind": self.kind, "param": self.param, "path": self.path}

    def __setstate__(self, state):
        self.__init__(**state)

    @classmethod
    def parse(cls, spec: str) -> "MaskSpec":
        """'center', 'center:0.3', 'random:0.5', or a path to a mask file or a folder of masks. Messages name the
        value as `mask '...' (--mask)`, so they read right from the API (mask=) and from `gcomp complete`."""
        if not spec:  # Path("") would be the current folder
            raise MaskError("mask '' (--mask) is empty: a kind (center, random, ...) or a mask file or folder")
        name, _, arg = spec.partition(":")
        name = ALIASES.get(name, name)
        if name in KINDS:
            if arg and name not in DEFAULT_PARAM:
                raise MaskError(f"mask {spec!r} (--mask): the {name} mask takes no parameter")
            try:
                param = float(arg) if arg else None
            except ValueError:
                raise MaskError(f"mask {spec!r} (--mask): the parameter must be a number") from None
            if name == "full":  # a kind for make_mask (reconstruction), not for completing images
                raise MaskError(f"mask {spec!r} (--mask) keeps every pixel: nothing to fill (choose from "
                                f"{', '.join(k for k in KINDS if k != 'full')}, or a mask file/folder)")
            try:  # a bad parameter fails here, once, before any image is read
                trial = make_mask(name, 64, param, np.random.default_rng(0))
            except MaskError as e:
                raise MaskError(f"mask {spec!r} (--mask): {e}") from None
            if name != "random" and trial.min() == 1 or name == "random" and not (param is None or param > 0):
                raise MaskError(f"mask {spec!r} (--mask) leaves nothing to fill")
            return cls(kind=name, param=param)
        p = Path(spec)
        if p.is_file():  # one mask for every image: read and checked once, before any image
            if read_mask_file(p).min() == 1:
                raise MaskError(f"{p}: the mask leaves nothing to fill (white = fill)")
            return cls(path=p)
        if p.exists():
            return cls(path=p)
        kinds = ", ".join(k for k in KINDS if k != "full")
        raise MaskError(f"mask {spec!r} (--mask) is neither a kind ({kinds}; half = left) nor an existing file or folder")

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        return self.kind + (f":{self.param:g}" if self.param is not None else "")

    def known(self, key: str, shape: tuple[int, int], size: int, seed: int) -> np.ndarray:
        """Full-resolution mask (1 = known) for the image named `key` (its path relative to the input)."""
        h, w = shape
        if self.kind in RANDOM_KINDS:
            return self._scaled(make_mask(self.kind, size, self.param, image_rng(seed, key, stream=1)), h, w)
        if self.kind is not None or not self.path.is_dir():  # one mask for every image: scaled to each
            return self._fixed_mask(h, w, size)
        f = self._find_in_folder(key)
        m = read_mask_file(f, key)
        if m.shape != (h, w):
            raise MaskError(f"{key}: mask {f} is {m.shape[1]}x{m.shape[0]}, the image {w}x{h}: a folder's masks "
                            f"must be the size of their images")
        return m

    def _fixed_mask(self, h: int, w: int, size: int) -> np.ndarray:
        """A fixed kind's mask, or the one mask file's, at h x w: made once per size, read-only (shared)."""
        with self._lock:
            m = self._fixed.get((h, w, size))
        if m is None:
            m = make_mask(self.kind, size, self.param) if self.kind is not None else read_mask_file(self.path)
            m = self._scaled(m, h, w)
            m.flags.writeable = False
            with self._lock:
                if len(self._fixed) >= FIXED_CACHED:
                    self._fixed.pop(next(iter(self._fixed)))
                self._fixed[(h, w, size)] = m
        return m

    @staticmethod
    def _scaled(m: np.ndarray, h: int, w: int) -> np.ndarray:
        """A mask drawn at the model's size (or a mask file's) scaled to the image (nearest: still 0 / 1)."""
        return m if m.shape == (h, w) else cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)

    def _find_in_folder(self, key: str) -> Path:
        """The mask file for the image named `key`: same relative folder and stem, else the stem at the top."""
        rel = Path(key)
        looked = [self.path / rel.parent] + ([self.path] if rel.parent != Path(".") else [])
        for cand in looked:
            if not cand.is_dir():
                continue
            found = [f for f in sorted(cand.glob(glob_escape(rel.stem) + ".*"))  # its stem exactly (not a.png.bak),
                     if os.path.normcase(f.stem) == os.path.normcase(rel.stem)  # as the file system compares it,
                     and f.suffix.lower() in MASK_SUFFIXES and f.is_file()]  # and an image (not a.xmp, a.txt)
            same = [f for f in found if f.name == rel.name]
            if same or len(found) == 1:
                return (same or found)[0]  # the mask named as its image is the one, beside others of its stem
            if found:
                raise MaskError(f"{key}: {len(found)} masks in {cand} for it ({', '.join(f.name for f in found)}) "
                                f"and none named {rel.name}: keep one")
        # Starts with the image's key, like every per-image error: the job's log puts the input file there.
        tried = " or ".join(f"{c / rel.stem}.*" for c in looked)
        raise MaskError(f"{key}: no mask in {self.path} (looked for {tried}; masks are matched by relative path "
                        f"and file stem)")


def glob_escape(s: str) -> str:
    import glob

    return glob.escape(s)
