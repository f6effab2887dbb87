"""Batch completion of an image or a folder tree: the job `gcomp complete` runs.

The per-batch work (`complete_batch`) is one function used by every driver. Around it, the
single-process driver lists the input names, decodes in a thread pool ahead of the search, and
writes each result atomically; finished outputs are skipped on a rerun, so an interrupted job
resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .. import __version__
from . import images
from .backends import Backend, BackendError, open_backend
from .blend import BLENDS, blend
from .images import TMP_PREFIX, ImageError, OutputError
from .encoder import Encoder, load_encoder
from .faces import FACE_MODES, find_face
from .masks import MaskError, MaskSpec, context_weights, image_rng, to_model_size
from .search import SearchParams

SUMMARY_NAME = "gcomp-summary.json"
PROGRESS_DIR = "_gcomp_progress"
PROGRESS_EVERY = 50  # the seed writes its snapshots every 50 iterations too


@dataclass(frozen=True)
class CompleteOptions:
    mask: str = "center"
    search: SearchParams = field(default_factory=SearchParams)
    batch_size: int = 64
    restarts: int = 1
    blend: str = "none"
    seed: int = 0
    overwrite: bool = False
    save_progress: bool = False
    shard: tuple[int, int] = (0, 1)  # (k, n): this process does the k-th of n parts
    workers: int = 4  # decode / encode threads
    face: str = "auto"  # auto: photos larger than the model are cropped around the face found in them
    init: str = "auto"  # starting latent: auto (the model's encoder if it has one), encoder, random

    def __post_init__(self):
        if self.batch_size < 1 or self.restarts < 1:
            raise ValueError("batch size and restarts must be >= 1")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {self.blend!r}")
        if self.face not in FACE_MODES:
            raise ValueError(f"face must be one of {FACE_MODES}, got {self.face!r}")
        k, n = self.shard
        if not (n >= 1 and 0 <= k < n):
            raise ValueError(f"shard must be K/N with 0 <= K < N, got {k}/{n}")


@dataclass
class Item:
    path: Path
    key: str  # path relative to the input root, '/'-separated: names masks, seeds and outputs
    out: Path


@dataclass
class Prepared:
    item: Item
    image: images.Image
    known: np.ndarray  # full resolution, 1 = known
    y: np.ndarray  # [C, S, S] in [-1, 1]
    w: np.ndarray  # [1, S, S] context weights
    known_small: np.ndarray | None = None  # [1, S, S]: the mask the search sees (1 = known)
    box: tuple[int, int, int] | None = None  # (x, y, side): the face crop the search sees, if any


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    search_seconds: float = 0.0
    images_per_s: float = 0.0
    settings: dict = field(default_factory=dict)
    summary_path: str = ""
    ray: dict = field(default_factory=dict)  # the Ray driver's cluster settings and per-worker counts

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict:
        d = asdict(self)
        d["n_failed"] = len(self.failed)
        if not d["ray"]:
            del d["ray"]
        return d


# -- inputs ------------------------------------------------------------------------------------

def iter_inputs(root: Path) -> Iterator[tuple[Path, str]]:
    """Image files under root in a stable order (sorted per folder), streamed folder by folder."""
    if root.is_file():
        yield root, root.name
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != PROGRESS_DIR)
        for name in sorted(filenames):
            if images.is_image_name(name) and not name.startswith(TMP_PREFIX):
                p = Path(dirpath) / name
                yield p, p.relative_to(root).as_posix()


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Deterministic split by a hash of the name: stable when files are added or removed."""
    k, n = shard
    return n == 1 or zlib.crc32(key.encode("utf-8")) % n == k


def output_path(src_root: Path, out_root: Path, key: str) -> Path:
    if src_root.is_file() and images.is_image_name(out_root):
        return out_root  # `gcomp complete photo.jpg done.jpg`
    return out_root / key


def output_dir(src: Path, dst: Path) -> Path:
    """The folder outputs, temporary files and the summary go to."""
    return dst.parent if (src.is_file() and images.is_image_name(dst)) else dst


def list_todo(src: Path, dst: Path, opts: "CompleteOptions") -> tuple[list[Item], int]:
    """This job's (shard's) images still to do, in listing order, and how many it skips because
    their output exists (the resume rule; --overwrite redoes them). Every driver uses it."""
    todo: list[Item] = []
    skipped = 0
    for path, key in iter_inputs(src):
        if not in_shard(key, opts.shard):
            continue
        out = output_path(src, dst, key)
        if out.exists() and not opts.overwrite:
            skipped += 1
            continue
        todo.append(Item(path, key, out))
    return todo, skipped


def temp_tag(shard: tuple[int, int]) -> str:
    """Goes into temporary output names, so a rerun of this shard removes only its own leftovers."""
    return f"s{shard[0]}of{shard[1]}-"


def error_text(key: str, path: str, err: Exception | str) -> str:
    """A per-image error as logged: prefixed with the image's name unless it already says it."""
    msg = str(err)
    return msg if key in msg or path in msg else f"{key}: {msg}"


def prepare(item: Item, spec: MaskSpec, size: int, seed: int, weighted: bool, face: str = "off",
            log: Callable[[str], None] | None = None) -> Prepared:
    image = images.read(item.path)
    h, w = image.shape
    box = None
    if face == "auto" and spec.kind is not None and max(h, w) > size:
        box = find_face(image.rgb)
        if box is None and log is not None:
            log(f"note: {item.key}: no face found; completing the whole image")
    if box is None:
        known = spec.known(item.key, image.shape, size, seed)
        region = image.rgb
    else:
        x, y, side = box
        known = np.ones((h, w), np.float32)  # the mask kind applies to the face crop
        known[y:y + side, x:x + side] = spec.known(item.key, (side, side), size, seed)
        region = image.rgb[y:y + side, x:x + side]
    small = to_model_size(known if box is None else known[box[1]:box[1] + box[2], box[0]:box[0] + box[2]], size)
    if small.min() == 1:
        raise MaskError(f"{item.key}: the mask leaves nothing to fill")
    return Prepared(item=item, image=image, known=known, y=images.to_model_input(region, size),
                    w=context_weights(small, weighted)[None], known_small=small[None], box=box)


# -- the per-batch work ------------------------------------------------------------------------

def initial_latents(keys: list[str], restarts: int, zdim: int, seed: int) -> np.ndarray:
    """[B * R, zdim], image-major: each image's R starting points come from its own name."""
    return np.stack([image_rng(seed, k, stream=2 + r).uniform(-1, 1, zdim).astype(np.float32)
                     for k in keys for r in range(restarts)])


def complete_batch(backend: Backend, batch: list[Prepared], opts: CompleteOptions,
                   on_progress: Callable[[int, np.ndarray], None] | None = None,
                   encoder: Encoder | None = None) -> tuple[list[np.ndarray], dict]:
    """Search, pick the best restart, blend, composite. Returns each image in its original layout.

    With an encoder, each image's first start is the encoder's latent; further restarts are random."""
    info = backend.info
    n, R = len(batch), opts.restarts
    keys = [p.item.key for p in batch]
    y = np.stack([p.y for p in batch])
    w = np.stack([p.w for p in batch])
    # A static-batch model runs any number of rows in padded parts (backends.base.FixedBatch).
    z0 = initial_latents(keys, R, info.zdim, opts.seed)
    if encoder is not None:
        z0.reshape(n, R, -1)[:, 0] = encoder(y, np.stack([p.known_small for p in batch]))
    yR, wR = np.repeat(y, R, 0), np.repeat(w, R, 0)
    cb = None
    if on_progress is not None:
        cb = lambda i, z: on_progress(i, z[::R])  # noqa: E731 (each image's first start)
    res = backend.search(z0, yR, wR, opts.search, cb)
    loss = res.loss.reshape(n, R)
    best = loss.argmin(1)
    z_best = res.z.reshape(n, R, -1)[np.arange(n), best]
    x = backend.generate(z_best)
    outs = []
    for p, xi in zip(batch, x):
        fill = paste_fill(p, images.from_model_output(xi))
        fill = blend(p.image.rgb, fill, p.known, opts.blend)
        outs.append(images.composite(p.image.original, fill, p.known))
    stats = {"loss": loss.min(1).tolist(), "best_restart": best.tolist(), "seconds": res.seconds,
             "history": res.history}
    return outs, stats


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


# -- the single-process driver -----------------------------------------------------------------

def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TMP_PREFIX}probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output folder {folder} is not writable: {e.strerror or e}") from None


DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def default_model() -> Path:
    """The model that ships inside the package (ONNX, runs without torch)."""
    if not (DEFAULT_MODEL / "step.onnx").is_file():
        raise BackendError(f"no --model given and the bundled model is missing from {DEFAULT_MODEL}: "
                           "train one with `gcomp train DATA --out RUN` and pass --model RUN")
    return DEFAULT_MODEL


def check_job(input, output, opts: CompleteOptions) -> tuple[Path, Path, MaskSpec, Path]:
    """(input, output, mask spec, output folder) after the checks that fail a whole job."""
    src, dst = Path(input), Path(output)
    if not src.exists():
        raise ImageError(f"input not found: {src}")
    spec = MaskSpec.parse(opts.mask)
    out_dir = output_dir(src, dst)
    check_writable(out_dir)
    return src, dst, spec, out_dir


def start_writing(out_dir: Path, opts: CompleteOptions) -> str:
    """This job's temporary-file tag, after removing what a killed run of the same shard left."""
    tag = temp_tag(opts.shard)
    images.remove_stale_temps(out_dir, tag)
    return tag


def complete(input: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike | None = None, *,
             backend: str | Backend = "auto", device: str = "cpu", options: CompleteOptions | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None,
             backend_options: dict | None = None) -> Summary:
    """Complete every image under `input` into `output` (same relative names and formats).

    Per-image problems (unreadable file, missing mask) are reported through `log` and in the
    summary; they never stop the rest. Problems with the whole job (model, output folder) raise.
    """
    opts = options or CompleteOptions()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    src, dst, spec, out_dir = check_job(input, output, opts)
    t0 = time.perf_counter()
    tag = start_writing(out_dir, opts)

    given = isinstance(backend, Backend)  # the caller activates and closes it
    if not given and model is None:
        model = default_model()
    be = backend if given else open_backend(model, backend, device, **(backend_options or {}))
    be.activate()
    for note in be.notes:
        log(f"note: {note}")
    opts = replace(opts, search=opts.search.resolved(be.info.meta.get("defaults")))
    encoder = load_encoder(model if model is not None else be.info.source, be.info, opts.init)
    summary = Summary(settings=job_settings(src, dst, model, be.name, device, spec, opts,
                                            str(encoder.path) if encoder else None, be.settings()))
    todo, summary.skipped = list_todo(src, dst, opts)

    def fail(item: Item, err: Exception) -> None:
        log(f"error: {error_text(item.key, str(item.path), err)}")
        summary.failed.append({"file": str(item.path), "error": str(err)})

    bs = opts.batch_size
    chunks = [todo[i:i + bs] for i in range(0, len(todo), bs)]
    size = be.info.size
    pool = ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="gcomp-io")
    writes: list[tuple[Item, Future]] = []
    bar = _progress_bar(progress, len(todo))
    try:
        ahead: deque = deque()

        def submit(chunk):
            return [(it, pool.submit(prepare, it, spec, size, opts.seed, opts.search.weighted, opts.face, log)) for it in chunk]

        it_chunks = iter(chunks)
        for chunk in it_chunks:
            ahead.append(submit(chunk))
            if len(ahead) >= 2:
                break
        batch_no = 0
        while ahead:
            futs = ahead.popleft()
            nxt = next(it_chunks, None)
            if nxt is not None:
                ahead.append(submit(nxt))  # decode the next batch while this one searches
            batch: list[Prepared] = []
            for item, fut in futs:
                try:
                    batch.append(fut.result())
                except (ImageError, MaskError, OSError) as e:
                    fail(item, e)
                    bar.advance()
            if batch:
                on_prog = _progress_writer(be, batch, dst if out_dir == dst else out_dir, batch_no,
                                           opts.search.iters) if opts.save_progress else None
                outs, stats = complete_batch(be, batch, opts, on_prog, encoder)
                summary.search_seconds += stats["seconds"]
                for p, arr in zip(batch, outs):
                    writes.append((p.item, pool.submit(images.write, p.item.out, arr, tag)))
                batch_no += 1
            writes = _drain(writes, summary, fail, bar, block=False)
        _drain(writes, summary, fail, bar, block=True)
    finally:
        pool.shutdown(wait=True)
        bar.close()
        if not given:
            be.deactivate()
    return finish_summary(summary, out_dir, opts, t0)


def job_settings(src: Path, dst: Path, model, backend_name: str, device: str, spec: MaskSpec,
                 opts: CompleteOptions, encoder: str | None, backend_settings: dict | None = None) -> dict:
    """The job's settings as the summary records them (the same for every driver)."""
    return {
        "gcomp_version": __version__, "input": str(src), "output": str(dst), "model": str(model),
        "backend": backend_name, "device": device, "backend_settings": backend_settings or {}, "mask": spec.describe(),
        **{k: v for k, v in asdict(opts).items() if k not in ("search", "mask")},
        "search": opts.search.as_dict(), "encoder": encoder,
    }


def finish_summary(summary: Summary, out_dir: Path, opts: CompleteOptions, t0: float) -> Summary:
    """Time it and write it atomically (one summary per shard)."""
    summary.seconds = time.perf_counter() - t0
    summary.images_per_s = summary.done / summary.seconds if summary.seconds > 0 else 0.0
    k, n = opts.shard
    name = SUMMARY_NAME if n == 1 else f"gcomp-summary.shard-{k}-of-{n}.json"
    summary.summary_path = str(out_dir / name)
    images.write_atomic(summary.summary_path, json.dumps(summary.as_dict(), indent=2).encode())
    return summary


def _drain(writes, summary: Summary, fail, bar, block: bool):
    left = []
    for item, fut in writes:
        if not block and not fut.done():
            left.append((item, fut))
            continue
        try:
            fut.result()
            summary.done += 1
        except (ImageError, OSError) as e:
            fail(item, e)
        bar.advance()
    return left


def _progress_writer(be: Backend, batch: list[Prepared], out_dir: Path, batch_no: int, iters: int):
    folder = out_dir / PROGRESS_DIR / f"batch_{batch_no:05d}"

    def on_progress(i: int, z: np.ndarray) -> None:
        if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == iters:
            x = be.generate(z[: len(batch)])
            images.write_rgb(folder / f"iter_{i + 1:05d}.png", progress_grid(batch, x))

    return on_progress


class _progress_bar:
    """A Rich progress bar on stderr over images; silent when disabled."""

    def __init__(self, enabled: bool, total: int):
        self.p = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.p = Progress(TextColumn("completing"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                              transient=False)
            self.task = self.p.add_task("images", total=total)
            self.p.start()

    def advance(self) -> None:
        if self.p:
            self.p.advance(self.task)

    def close(self) -> None:
        if self.p:
            self.p.stop()
