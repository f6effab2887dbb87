"""The per-batch work every driver runs: the latent search, the best restart, pasting and blending the fill."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from . import images
from .backends import Backend, BackendError
from .blend import blend_many, blend_stacked, rows_of
from .encoder import Encoder
from .jobs import PROGRESS_DIR
from .masks import image_rng
from .options import Settings
from .prepare import Prepared

PROGRESS_EVERY = 50  # the seed writes its snapshots every 50 iterations too


def initial_latents(keys: list[str], restarts: int, zdim: int, seed: int) -> np.ndarray:
    """[B * R, zdim], image-major: each image's R starting points come from its own name."""
    return np.stack([image_rng(seed, k, stream=2 + r).uniform(-1, 1, zdim).astype(np.float32)
                     for k in keys for r in range(restarts)])


def complete_batch(backend: Backend, batch: list[Prepared], opts: Settings,
                   on_progress: Callable[[int, np.ndarray], None] | None = None,
                   encoder: Encoder | None = None) -> tuple[list[np.ndarray], dict]:
    """Search, pick the best restart, blend, composite. Returns each image in its original layout
    (an in-memory array: RGB). opts: the job's Settings, resolved once (Model.options), used as given. With an
    encoder, each image's first start is the encoder's latent; further restarts are random. stats: each image's
    final loss (NaN at 0 iterations with one start: not computed), the restart that won, the search's seconds and
    its mean loss per step. The two halves, `generate_batch` (the networks) and `finish_batch` (the CPU's blend
    and composite), are what a pipelined driver runs side by side on consecutive batches."""
    x, stats = generate_batch(backend, batch, opts, on_progress, encoder)
    return finish_batch(batch, x, opts), stats


def generate_batch(backend: Backend, batch: list[Prepared], opts: Settings,
                   on_progress: Callable[[int, np.ndarray], None] | None = None,
                   encoder: Encoder | None = None) -> tuple[np.ndarray, dict]:
    """The networks' half of complete_batch: the starts, the search, the best restart's G(z) ([B, C, S, S])."""
    if not isinstance(opts, Settings):
        raise TypeError(f"a batch runs a job's resolved Settings (Model.options, Settings.resolve), got "
                        f"{type(opts).__name__}")
    info = backend.info
    n, R = len(batch), opts.restarts
    keys = [p.item.key for p in batch]
    y = np.stack([p.y for p in batch])
    searches = opts.searches
    z_enc = None if encoder is None else encoder(y, np.stack([p.known_small for p in batch]))
    if z_enc is not None and R == 1:
        z0 = z_enc  # every start is the encoder's: no random draws
    else:
        z0 = initial_latents(keys, R, info.zdim, opts.seed)
        if z_enc is not None:
            z0.reshape(n, R, -1)[:, 0] = z_enc
    if not searches:
        # No step and one start: the loss would decide nothing, so no graph computes it (it is a whole forward
        # and backward pass of G and D, more than the encoder and the generator together): reported as NaN.
        z_best, loss, best = z0, np.full((n, 1), np.nan), np.zeros(n, int)
        seconds, history = 0.0, []
    else:
        w = np.stack([p.weights(opts.search.weighted) for p in batch])  # made here if prepared without them
        yR, wR = (y, w) if R == 1 else (np.repeat(y, R, 0), np.repeat(w, R, 0))
        cb = None
        if on_progress is not None:
            cb = lambda i, z: on_progress(i, z[::R])  # noqa: E731 (each image's first start)
        res = backend.search(z0, yR, wR, opts.search, cb)
        loss = res.loss.reshape(n, R)
        best = np.where(np.isnan(loss), np.inf, loss).argmin(1)  # a diverged restart never wins over the others
        loss = loss[np.arange(n), best][:, None]
        z_best = res.z.reshape(n, R, -1)[np.arange(n), best]
        seconds, history = res.seconds, res.history
        if hasattr(on_progress, "finish"):
            on_progress.finish()  # progress_writer: an early stop's last state is a snapshot too
    stats = {"loss": loss.min(1).tolist(), "best_restart": best.tolist(), "seconds": seconds, "history": history}
    if not np.isfinite(z_best).all():
        raise BackendError(f"the search diverged (NaN latents after {len(history)} steps, lr {opts.search.lr:g}): "
                           f"lower --lr" if searches else "the encoder returned NaN or infinite latents: the model "
                           "is broken (retrain or re-export its encoder)")
    x = backend.generate(z_best)
    if not np.isfinite(x).all():  # ~0.3 ms for 64 faces: a broken model fails the job, not one black hole per image
        raise BackendError("the generator returned NaN or infinite values: the model is broken (a training run that "
                           "diverged?); `gcomp export` validates a checkpoint against PyTorch and says where")
    return x, stats


def finish_batch(batch: list[Prepared], x: np.ndarray, opts: Settings) -> list[np.ndarray]:
    """The CPU's half of complete_batch: each G(z) pasted, blended and composited over its image."""
    if _stackable(batch, x):
        return _finish_stacked(batch, x, opts)
    outs = []
    fills = blend_many([p.image.rgb for p in batch], [paste_fill(p, images.from_model_output(xi)) for p, xi in
                                                       zip(batch, x)], [p.known for p in batch], opts.blend)
    for p, fill in zip(batch, fills):
        if p.rgb_out:
            outs.append(np.where(p.known.astype(bool)[:, :, None], p.image.rgb, fill))
        else:
            outs.append(images.composite(p.image.original, fill, p.known))
    return outs


def _stackable(batch: list[Prepared], x: np.ndarray) -> bool:
    """Every image at the model's size with no face crop and 8-bit colour, all files or all arrays: a folder of
    face crops, which finish_batch takes as one stacked array (the same results, fewer steps per face)."""
    size, arrays = x.shape[2:], batch[0].rgb_out
    return all(p.box is None and p.rgb_out == arrays and p.image.rgb.shape[:2] == size
               and p.image.original.dtype == np.uint8 and p.image.original.shape[2:] == (3,) for p in batch)


def _finish_stacked(batch: list[Prepared], x: np.ndarray, opts: Settings) -> list[np.ndarray]:
    """finish_batch for a _stackable batch: G's images, the blend and the composite each one step for the batch
    (64 faces at 64 x 64, center hole, AVX2 EPYC: 0.33 against 0.46 ms per face one by one)."""
    rgb = np.stack([p.image.rgb for p in batch])
    fills = blend_stacked(rgb, images.from_model_output(x), [p.known for p in batch], opts.blend)
    arrays = batch[0].rgb_out  # an array's result is RGB; a file's keeps the file's BGR order (images.composite)
    out = rgb if arrays else np.stack([p.image.original for p in batch])
    fills = fills if arrays else fills[..., ::-1]
    flat_out, flat_fill = out.reshape(len(batch), -1, 3), fills.reshape(len(batch), -1, 3)
    same: dict[int, list[int]] = {}  # images sharing one mask array (a fixed kind, one mask file) go together
    for i, p in enumerate(batch):
        same.setdefault(id(p.known), []).append(i)
    for idx in same.values():
        take = np.flatnonzero(~batch[idx[0]].known.astype(bool))  # what the fill gives: all but the known pixels
        rows = rows_of(idx)
        flat_out[rows, take] = flat_fill[rows, take]
    return list(out)


def paste_fill(p: Prepared, gen: np.ndarray) -> np.ndarray:
    """G's image at model size -> a full-resolution fill (resized into the face crop, if any)."""
    h, w = p.image.shape
    if p.box is None:
        return gen if gen.shape[:2] == (h, w) else cv2.resize(gen, (w, h), interpolation=cv2.INTER_CUBIC)
    x, y, side = p.box
    fill = p.image.rgb.copy()
    fill[y:y + side, x:x + side] = cv2.resize(gen, (side, side), interpolation=cv2.INTER_CUBIC)
    return fill


def progress_grid(batch: list[Prepared], x: np.ndarray) -> np.ndarray:
    """Each image's current completion at model size, like the seed's hats_imgs snapshots."""
    tiles = []
    for p, xi in zip(batch, x):
        k = p.known_small
        tiles.append(images.from_model_output(k * p.y + (1 - k) * xi))
    return images.grid(tiles, cols=min(8, len(tiles)))


def progress_writer(be: Backend, batch: list[Prepared], out_dir: Path, batch_no: int, iters: int):
    """An on_progress callback writing snapshot grids to OUT/_gcomp_progress/batch_NNNNN/ (--save-progress)."""
    folder = out_dir / PROGRESS_DIR / f"batch_{batch_no:05d}"

    last: list = []  # the latest step and z seen, unless written already

    def write(i: int, z: np.ndarray) -> None:
        x = be.generate(z[: len(batch)])
        images.write_rgb(folder / f"iter_{i + 1:05d}.png", progress_grid(batch, x))

    def on_progress(i: int, z: np.ndarray) -> None:
        last[:] = [i, z]
        if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == iters:
            write(i, z)
            last.clear()

    def finish() -> None:
        """After the search: where an early stop ended it before the next snapshot, its last state is written too."""
        if last:
            write(*last)
            last.clear()

    on_progress.finish = finish
    return on_progress
