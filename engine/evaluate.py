"""`gcomp eval`: completion quality per mask kind, beside OpenCV's inpainting on the same images.

Metrics on uint8 RGB images: PSNR over the whole image (peak 255) and over the hole alone, SSIM
over the whole image (Wang et al. 2004: Gaussian window 11, sigma 1.5, per channel, averaged),
and mean L1 over the hole in [0, 1] units. The paper's Table 1 does not state its PSNR
convention, so both PSNRs are reported and OpenCV is always measured beside.
"""
from __future__ import annotations

import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from . import images
from .jobs import iter_inputs
from .masks import MaskSpec
from .options import CompleteOptions

if TYPE_CHECKING:
    from .api import Model

ALIASES = {"half": "left"}  # the paper's "half" mask is the left half
PAPER_PSNR = {"center": (21.3, 19.4), "pattern": (19.2, 17.4), "random": (20.6, 22.8), "half": (15.5, 13.7)}
OPENCV = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
INPAINT_RADIUS = 3


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB, peak 255; `where` (HxW bool) restricts it to those pixels."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if where is not None:
        d = d[where.astype(bool)]
    mse = float(np.mean(d * d)) if d.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over channels with an 11x11 Gaussian window (sigma 1.5), C1/C2 from K = 0.01, 0.03."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a = a.astype(np.float64).reshape(a.shape[0], a.shape[1], -1)
    b = b.astype(np.float64).reshape(b.shape[0], b.shape[1], -1)
    blur = lambda x: cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)  # noqa: E731
    vals = []
    for c in range(a.shape[2]):
        x, y = a[:, :, c], b[:, :, c]
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        vals.append(s[5:-5, 5:-5].mean() if min(s.shape) > 10 else s.mean())  # skip the padded border
    return float(np.mean(vals))


def hole_l1(a: np.ndarray, b: np.ndarray, hole: np.ndarray) -> float:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))[hole.astype(bool)]
    return float(d.mean() / 255.0) if d.size else 0.0


def metrics(pred: np.ndarray, truth: np.ndarray, known: np.ndarray) -> dict:
    hole = known < 0.5
    return {"psnr": psnr(pred, truth), "psnr_hole": psnr(pred, truth, hole), "ssim": ssim(pred, truth),
            "l1_hole": hole_l1(pred, truth, hole)}


def opencv_inpaint(rgb: np.ndarray, known: np.ndarray, method: str) -> np.ndarray:
    hole = (known < 0.5).astype(np.uint8) * 255
    return cv2.inpaint(rgb, hole, INPAINT_RADIUS, OPENCV[method])


def read_images(data: str | Path, limit: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8 RGB) from a folder tree or a tar of images, streamed; bad files skipped."""
    p = Path(data)
    n = 0
    if p.is_file() and tarfile.is_tarfile(p):
        with tarfile.open(p) as tar:
            for m in tar:
                if limit is not None and n >= limit:
                    return
                if m.isfile() and images.is_image_name(m.name):
                    try:
                        yield m.name, images.decode(tar.extractfile(m).read(), m.name).rgb
                        n += 1
                    except images.ImageError:
                        continue
        return
    for path, key in iter_inputs(p):
        if limit is not None and n >= limit:
            return
        try:
            yield key, images.read(path).rgb
            n += 1
        except images.ImageError:
            continue


@dataclass
class KindResult:
    mask: str
    n: int = 0
    scores: dict = field(default_factory=dict)  # method -> metric -> mean
    psnr_by_iter: list = field(default_factory=list)  # (iteration, mean whole-image PSNR)
    seconds: float = 0.0
    search: dict = field(default_factory=dict)  # the settings used, after the model's defaults


def evaluate(model: "Model", data, masks=("center", "random", "half", "pattern"), opts: CompleteOptions | None = None,
             limit: int | None = 100, curve_every: int | None = None, log=print) -> tuple[list[KindResult], dict]:
    """Complete `limit` images of `data` per mask kind with an open model (the public API, as `gcomp
    complete` does); returns per-kind means and the picture rows.

    curve_every: record the whole-image PSNR every N iterations (None: iters / 20; 0: never)."""
    opts = model.options(replace(opts or CompleteOptions(), face="off"))  # eval images are at the model's size
    if curve_every is None:
        curve_every = max(opts.search.iters // 20, 1)
    size = model.size
    faces = [(k, cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) if im.shape[:2] != (size, size) else im)
             for k, im in read_images(data, limit)]
    if not faces:
        raise ValueError(f"no readable images in {data}")
    results, pictures = [], {}
    for kind in masks:
        spec = ALIASES.get(kind, kind)
        MaskSpec.parse(spec)  # an unknown kind fails before any work
        res = KindResult(kind, n=len(faces), search=opts.search.as_dict())
        per = {m: [] for m in ("gcomp", "telea", "ns")}
        curve: dict[int, list[float]] = {}
        t0 = time.perf_counter()
        for start in range(0, len(faces), opts.batch_size):
            batch = [model.prepare(rgb, spec, name=key, options=opts) for key, rgb in faces[start:start + opts.batch_size]]
            on_prog = None
            if curve_every:
                def on_prog(i, z, batch=batch):
                    if (i + 1) % curve_every == 0:
                        x = model.backend.generate(z[: len(batch)])
                        for p, xi in zip(batch, x):
                            out = np.where(p.known.astype(bool)[:, :, None], p.image.rgb, images.from_model_output(xi))
                            curve.setdefault(i + 1, []).append(psnr(out, p.image.rgb))
            outs, _ = model.complete_prepared(batch, opts, on_prog)
            for p, out in zip(batch, outs):
                truth = p.image.rgb
                per["gcomp"].append(metrics(out, truth, p.known))
                tel = opencv_inpaint(truth, p.known, "telea")
                per["telea"].append(metrics(tel, truth, p.known))
                per["ns"].append(metrics(opencv_inpaint(truth, p.known, "ns"), truth, p.known))
                if len(pictures.setdefault(kind, [])) < 8:
                    masked = (truth * p.known[:, :, None]).astype(np.uint8)
                    pictures[kind].append([masked, out, tel, truth])
        res.seconds = time.perf_counter() - t0
        res.scores = {m: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for m, rows in per.items()}
        res.psnr_by_iter = [(i, float(np.mean(v))) for i, v in sorted(curve.items())]
        log(f"{kind}: gcomp {res.scores['gcomp']['psnr']:.2f} dB, Telea {res.scores['telea']['psnr']:.2f} dB "
            f"({res.n} images, {res.seconds:.1f} s)")
        results.append(res)
    return results, pictures


def picture_grid(pictures: dict) -> np.ndarray:
    """Rows: per mask kind, for each image: masked input | gcomp | Telea | original."""
    tiles = []
    cols = 0
    for kind, rows in pictures.items():
        for quad in rows[:4]:
            tiles.extend(quad)
        cols = 16
    return images.grid(tiles, cols=cols if tiles else 1)


def curve_plot(results: list[KindResult], width: int = 640, height: int = 400) -> np.ndarray:
    """A plain line plot of whole-image PSNR against iterations, drawn with OpenCV (no matplotlib)."""
    img = np.full((height, width, 3), 255, np.uint8)
    pts_all = [p for r in results for p in r.psnr_by_iter]
    if not pts_all:
        return img
    x0, x1 = 0, max(i for i, _ in pts_all)
    y0, y1 = min(v for _, v in pts_all) - 0.5, max(v for _, v in pts_all) + 0.5
    L, R, T, B = 60, 20, 20, 50
    sx = lambda i: int(L + (width - L - R) * (i - x0) / max(x1 - x0, 1))  # noqa: E731
    sy = lambda v: int(height - B - (height - T - B) * (v - y0) / max(y1 - y0, 1e-9))  # noqa: E731
    cv2.rectangle(img, (L, T), (width - R, height - B), (0, 0, 0), 1)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for n, r in enumerate(results):
        pts = np.array([(sx(i), sy(v)) for i, v in r.psnr_by_iter], np.int32)
        c = colours[n % len(colours)][::-1]
        cv2.polylines(img, [pts], False, c, 2, cv2.LINE_AA)
        cv2.putText(img, r.mask, (L + 10, T + 20 + 18 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.5, c, 1, cv2.LINE_AA)
    cv2.putText(img, f"iterations (0..{x1})", (width // 2 - 60, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, f"PSNR dB {y0:.1f}..{y1:.1f}", (5, T + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return img
