"""`gcomp eval`: completion quality per mask kind, beside OpenCV's inpainting and the no-GAN harmonic fill.

What is scored is what `gcomp complete` writes: every input gets noise in its hole first (no method may
depend on the hole's old content), goes through the files path, and the written files are read back.

Metrics on uint8 RGB images against the original: PSNR over the whole image (peak 255) and over the hole
alone; SSIM over the whole image, scikit-image's convention (`structural_similarity(a, b, channel_axis=2,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)`: Wang et al. 2004, an 11x11
Gaussian window of sigma 1.5, K = 0.01, 0.03, population covariances, per channel, averaged, the 5-px
border left out); mean L1 over the hole in [0, 1] units. The paper's Table 1 does not state its PSNR
convention, so both PSNRs are reported and OpenCV is always measured beside.
"""
from __future__ import annotations

import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np

from . import images
from .blend import blend
from .jobs import iter_inputs
from .masks import MaskSpec, image_rng
from .options import CompleteOptions

if TYPE_CHECKING:
    from .api import Model

PAPER_PSNR = {"center": (21.3, 19.4), "pattern": (19.2, 17.4), "random": (20.6, 22.8), "half": (15.5, 13.7)}
OPENCV = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
#: what eval scores: gcomp's written files, OpenCV's two inpainters and the no-GAN harmonic fill, on the
#: same noisy inputs
METHODS = ("gcomp", "telea", "ns", "harmonic")
INPAINT_RADIUS = 3


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB, peak 255; `where` (HxW bool) restricts it to those pixels."""
    d = a.astype(np.float64) - b.astype(np.float64)
    if where is not None:
        d = d[where.astype(bool)]
    mse = float(np.mean(d * d)) if d.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as scikit-image computes it (see the module's docstring), per channel, averaged."""
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


def harmonic_fill(rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The no-GAN baseline: the hole filled by the smoothest surface through its known border (the Poisson
    blend with G's gradients weighted 0, `--blend poisson:0`): what the blend alone would give."""
    fill = blend(rgb, np.zeros_like(rgb), known, "poisson:0")
    return np.where((known >= 0.5)[:, :, None], rgb, fill)


def opencv_inpaint(rgb: np.ndarray, known: np.ndarray, method: str) -> np.ndarray:
    hole = (known < 0.5).astype(np.uint8) * 255
    return cv2.inpaint(rgb, hole, INPAINT_RADIUS, OPENCV[method])


def read_images(data: str | Path, limit: int | None = None,
                on_skip: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8 RGB) from a folder tree or a tar of images, streamed; bad files skipped, each
    reported to on_skip(file, reason) (a silent skip would score fewer images than asked for)."""
    p = Path(data)
    n = 0

    def skip(name: str, err: images.ImageError) -> None:
        if on_skip:
            on_skip(name, str(err).removeprefix(f"{name}: "))  # decode's messages start with the name

    if p.is_file() and tarfile.is_tarfile(p):
        with tarfile.open(p) as tar:
            for m in tar:
                if limit is not None and n >= limit:
                    return
                if m.isfile() and images.is_image_name(m.name):
                    try:
                        yield m.name, images.decode(tar.extractfile(m).read(), m.name).rgb
                        n += 1
                    except images.ImageError as e:
                        skip(m.name, e)
        return
    for path, key in iter_inputs(p):
        if limit is not None and n >= limit:
            return
        try:
            yield key, images.read(path).rgb
            n += 1
        except images.ImageError as e:
            skip(str(path), e)


def check_args(data: str | Path, masks, limit: int | None) -> None:
    """Refuse bad arguments before the model loads or an image is read: a missing DATA and --limit 0 would
    otherwise both read as 'no readable images', and an unknown mask kind would fail only after the reading."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"--limit must be >= 1, got {limit!r}")
    if not Path(data).exists():
        raise ValueError(f"data path does not exist: {data}")
    if not masks:
        raise ValueError("--mask: give at least one mask kind")
    for kind in masks:
        MaskSpec.parse(kind)  # "half" is masks.ALIASES' left half


@dataclass
class KindResult:
    mask: str
    n: int = 0
    scores: dict = field(default_factory=dict)  # method -> metric -> mean
    seconds: float = 0.0  # gcomp's time for the kind: writing inputs, `complete_files`, reading outputs
    images_per_s: float = 0.0
    search: dict = field(default_factory=dict)  # the settings used, after the model's defaults
    blend: str = ""
    skipped: int = 0  # unreadable files passed over while reading the data (the same for every kind)
    #: gcomp's own PSNR and SSIM per face, {name: [psnr, ssim]}: two models (or settings) are compared face by
    #: face from these (benchmarks/paired.py), which is far tighter than comparing the means
    per_face: dict = field(default_factory=dict)


def noisy_input(rgb: np.ndarray, known: np.ndarray, key: str, seed: int = 0) -> np.ndarray:
    """The image with its hole overwritten by uniform noise, seeded by (seed, name): what eval feeds every
    method. Real inputs carry unwanted content in the hole; a method whose result depends on it would score
    differently here than on the true image, so nothing may read the hole."""
    noise = image_rng(seed, key, stream=7).integers(0, 256, rgb.shape, dtype=np.uint8)
    return np.where(known.astype(bool)[:, :, None], rgb, noise)


def evaluate(model: "Model", data, masks=("center", "random", "half", "pattern"), opts: CompleteOptions | None = None,
             limit: int | None = 100, log=print, work_dir: str | Path | None = None,
             pictures_per_kind: int = 8) -> tuple[list[KindResult], dict]:
    """Score `limit` images of `data` per mask kind, measuring exactly what `gcomp complete` writes.

    Per kind: each image (resized to the model's size) gets the kind's mask and uniform noise in its hole
    (noisy_input), is written as PNG under WORK/KIND/input/, completed by the open model's `complete_files`
    (the code path of `gcomp complete`) into WORK/KIND/output/, read back and scored against the original;
    cv2.inpaint (Telea, NS) runs on the same noisy inputs. work_dir None: a temporary folder, removed after.
    Returns per-kind means and the picture rows (noisy input | gcomp | Telea | NS | original)."""
    import tempfile

    check_args(data, masks, limit)
    opts = replace(opts or CompleteOptions(), face="off", overwrite=True)  # eval images are at the model's size
    size = model.size
    skipped = []

    def skip(name: str, reason: str) -> None:
        skipped.append(name)
        log(f"note: {name}: skipped, {reason}")

    faces = [(_png_key(k), cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) if im.shape[:2] != (size, size) else im)
             for k, im in read_images(data, limit, on_skip=skip)]
    if not faces:
        raise ValueError(f"no readable images in {data}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    tmp = tempfile.TemporaryDirectory(prefix="gcomp-eval-") if work_dir is None else None
    root = Path(tmp.name if tmp else work_dir)
    results, pictures = [], {}
    try:
        for kind in masks:
            spec = MaskSpec.parse(kind)
            kopts = replace(opts, mask=kind)
            resolved = model.options(kopts)  # the model may recommend settings per mask kind
            res = KindResult(kind, n=len(faces), search=resolved.search.as_dict(), blend=resolved.blend,
                             skipped=len(skipped))
            src, dst = root / kind / "input", root / kind / "output"
            t0 = time.perf_counter()
            inputs = {}
            for key, rgb in faces:
                known = spec.known(key, rgb.shape[:2], size, opts.seed)
                inputs[key] = (noisy_input(rgb, known, key, opts.seed), known)
                images.write_rgb(src / key, inputs[key][0])
            summary = model.complete_files(src, dst, kopts)
            if summary.failed:
                raise ValueError(f"{len(summary.failed)} of {len(faces)} images failed: {summary.failed[0]['error']}")
            outs = {key: images.read(dst / key).rgb for key, _ in faces}
            res.seconds = time.perf_counter() - t0
            res.images_per_s = len(faces) / res.seconds
            per = {m: [] for m in METHODS}
            for key, truth in faces:
                noisy, known = inputs[key]
                fills = {"gcomp": outs[key], "telea": opencv_inpaint(noisy, known, "telea"),
                         "ns": opencv_inpaint(noisy, known, "ns"), "harmonic": harmonic_fill(noisy, known)}
                for m, img in fills.items():
                    per[m].append(metrics(img, truth, known))
                if len(pictures.setdefault(kind, [])) < pictures_per_kind:
                    pictures[kind].append([noisy, fills["gcomp"], fills["telea"], fills["ns"], truth])
            res.scores = {m: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for m, rows in per.items()}
            res.per_face = {key: [round(r["psnr"], 4), round(r["ssim"], 5)] for (key, _), r in zip(faces, per["gcomp"])}
            log(f"{kind}: gcomp {res.scores['gcomp']['psnr']:.2f} dB / SSIM {res.scores['gcomp']['ssim']:.3f}, "
                f"Telea {res.scores['telea']['psnr']:.2f} / {res.scores['telea']['ssim']:.3f}, "
                f"NS {res.scores['ns']['psnr']:.2f} / {res.scores['ns']['ssim']:.3f}, "
                f"harmonic {res.scores['harmonic']['psnr']:.2f} / {res.scores['harmonic']['ssim']:.3f} "
                f"({res.n} images, {res.images_per_s:.1f} images/s)")
            results.append(res)
    finally:
        if tmp:
            tmp.cleanup()
    return results, pictures


def _png_key(key: str) -> str:
    """Eval's inputs are written losslessly (PNG) whatever the data set's format."""
    return Path(key).with_suffix(".png").as_posix()


def picture_grid(pictures: dict, per_row: int = 2) -> np.ndarray:
    """Per mask kind, `per_row` images a row, each as: noisy input | gcomp | Telea | NS | original."""
    tiles, cols = [], 1
    for rows in pictures.values():
        for group in rows:
            tiles.extend(group)
            cols = per_row * len(group)
    return images.grid(tiles, cols=cols)
