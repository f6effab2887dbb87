"""Training images from folders and tar shards, read in place.

A DATA path is an image folder (searched recursively for .png .jpg .jpeg .bmp .webp) or a plain
(uncompressed) tar file of images, such as the celeba64 shards. Tars are never extracted: they are
indexed once (member name, data offset, size) and each image's bytes are read at its offset.
File handles are opened lazily in each process, so DataLoader workers never share one.

Every image becomes float32 CHW RGB in [-1, 1]: decoded with OpenCV, center-cropped to a square,
resized to the training size (INTER_AREA when shrinking).

Sampling is by step, not by epoch state, so a resumed run sees exactly the batches an
uninterrupted one would: epoch e's order is `np.random.default_rng([seed, e]).permutation(n)`,
rank r of W takes every W-th index of it, and each epoch drops its last incomplete batch.
"""
from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..engine.images import opencv_quiet

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_SKIP = 100  # consecutive unreadable images before giving up


class DataError(ValueError):
    """Training data that cannot be used: a missing path, no images, a compressed tar."""


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTS) and not base.startswith("._")  # skip macOS AppleDouble files


def _index_tar(path: Path) -> tuple[list[str], list[int], list[int]]:
    """Member names, data offsets and sizes, read from the headers only (nothing is extracted)."""
    names, offsets, sizes = [], [], []
    try:
        tf = tarfile.open(path, mode="r:")  # "r:" = no compression: offsets are then file offsets
    except tarfile.ReadError as e:
        raise DataError(f"{path}: not a plain (uncompressed) tar file ({e}); "
                        "compressed tars cannot be read in place, unpack or re-pack them without compression") from None
    with tf:
        while True:
            ti = tf.next()
            if ti is None:
                break
            tf.members.clear()  # keep only names/offsets in memory, not a TarInfo per member
            if ti.isfile() and _is_image_name(ti.name):
                names.append(ti.name)
                offsets.append(ti.offset_data)
                sizes.append(ti.size)
    return names, offsets, sizes


def _index_folder(path: Path) -> list[str]:
    files = [os.path.join(root, f) for root, _, fs in os.walk(path, followlinks=True) for f in fs
             if _is_image_name(f)]
    files.sort()
    return files


def decode_image(data: bytes, size: int) -> np.ndarray | None:
    """Encoded image bytes -> float32 [3, size, size] RGB in [-1, 1]; None when undecodable."""
    with opencv_quiet():  # a corrupt file gets the loader's one `warning:` line, not OpenCV's own lines too
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # 8-bit BGR, alpha dropped
    if img is None or img.size == 0:
        return None
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img = img[y0:y0 + s, x0:x0 + s]
    if s != size:
        interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


class ImageSource(Dataset):
    """Map-style dataset over image folders and plain tar shards. `ds[i]` is a float32 tensor [3, S, S]."""

    def __init__(self, paths: Sequence[str | os.PathLike], size: int = 64):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise DataError("no data paths given")
        self.size = int(size)
        self.paths = [Path(p) for p in paths]
        self._tars: list[str] = []
        src, names, offsets, sizes = [], [], [], []
        for p in self.paths:
            if p.is_dir():
                files = _index_folder(p)
                names += files
                src += [-1] * len(files)
                offsets += [0] * len(files)
                sizes += [-1] * len(files)
            elif p.is_file() and tarfile.is_tarfile(p):
                n, o, s = _index_tar(p)
                src += [len(self._tars)] * len(n)
                self._tars.append(str(p))
                names += n
                offsets += o
                sizes += s
            elif p.is_file() and _is_image_name(p.name):
                names.append(str(p))
                src.append(-1)
                offsets.append(0)
                sizes.append(-1)
            elif not p.exists():
                raise DataError(f"data path does not exist: {p}")
            else:
                raise DataError(f"{p}: not an image folder, a tar file or an image")
        if not names:
            shown = ", ".join(str(p) for p in self.paths)
            raise DataError(f"no images found in {shown} (looked for {' '.join(IMAGE_EXTS)} files, "
                            "in folders recursively and in plain tar files)")
        self.names = names  # tar member name, or the file's path for loose images
        self._src = np.asarray(src, np.int32)  # tar index, or -1 for a loose file
        self._offset = np.asarray(offsets, np.int64)
        self._nbytes = np.asarray(sizes, np.int64)
        self._fds: dict[int, int] = {}
        self._pid = None
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        return (f"{len(self):,} images from {len(self.paths)} path(s)"
                f" ({len(self._tars)} tar, {int((self._src < 0).sum()):,} loose files)")

    # --- per-process file handles ---------------------------------------------------------
    def _fd(self, tar: int) -> int:
        if self._pid != os.getpid():  # first use in this process (e.g. a DataLoader worker)
            self._fds = {}  # inherited descriptors share a file offset with the parent: never reuse them
            self._pid = os.getpid()
        fd = self._fds.get(tar)
        if fd is None:
            fd = self._fds[tar] = os.open(self._tars[tar], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return fd

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"], state["_pid"] = {}, None
        return state

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds, self._pid = {}, None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def read_bytes(self, i: int) -> bytes:
        tar = int(self._src[i])
        if tar < 0:
            with open(self.names[i], "rb") as f:
                return f.read()
        fd, off, n = self._fd(tar), int(self._offset[i]), int(self._nbytes[i])
        if hasattr(os, "pread"):  # positional read: no shared file offset to race on
            return os.pread(fd, n, off)
        os.lseek(fd, off, os.SEEK_SET)
        return os.read(fd, n)

    def _where(self, i: int) -> str:
        tar = int(self._src[i])
        return self.names[i] if tar < 0 else f"{self._tars[tar]}:{self.names[i]}"

    def load(self, i: int) -> np.ndarray | None:
        """Image i as float32 [3, S, S], or None when it cannot be read or decoded."""
        try:
            return decode_image(self.read_bytes(i), self.size)
        except (OSError, cv2.error):
            return None

    def __getitem__(self, i: int) -> torch.Tensor:
        """Image i; an unreadable image is replaced by the next readable one (with a warning once),
        so one corrupt file never stops a long run and batch shapes stay fixed."""
        n = len(self)
        for k in range(MAX_SKIP):
            j = (int(i) + k) % n
            x = self.load(j)
            if x is not None:
                return torch.from_numpy(x)
            if j not in self._bad:
                self._bad.add(j)
                print(f"warning: skipping unreadable image {self._where(j)}", file=sys.stderr, flush=True)
        raise DataError(f"{MAX_SKIP} unreadable images in a row from index {i} (last: {self._where(j)})")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of epoch `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class EpochSampler(Sampler[int]):
    """Deterministic, DDP-aware order: epoch e is `epoch_order(n, seed, e)`, rank r takes every
    world_size-th index of it, truncated so every rank gets the same count. Call set_epoch(e)."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.n, self.seed, self.rank, self.world_size = int(n), int(seed), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.world_size

    def indices(self, epoch: int | None = None) -> np.ndarray:
        order = epoch_order(self.n, self.seed, self.epoch if epoch is None else epoch)
        return order[self.rank::self.world_size][:len(self)]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps [start, stop): step s is batch s % steps_per_epoch of epoch s // steps_per_epoch
    (the last incomplete batch of each epoch is dropped). Depends only on (n, batch, seed, rank, world),
    which is what makes resuming exact."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, stop: int | None = None):
        self.sampler = EpochSampler(n, seed, rank, world_size)
        self.batch_size = int(batch_size)
        self.steps_per_epoch = len(self.sampler) // self.batch_size
        if self.steps_per_epoch < 1:
            raise DataError(f"{n} images are fewer than one batch ({batch_size} per process x {world_size} "
                            f"process(es)); lower --batch-size or add images")
        self.start = int(start)
        self.stop = self.start + self.steps_per_epoch if stop is None else int(stop)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch(self, step: int) -> list[int]:
        epoch, j = divmod(int(step), self.steps_per_epoch)
        idx = self.sampler.indices(epoch)
        return idx[j * self.batch_size:(j + 1) * self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        cached_epoch, idx = None, None
        for s in range(self.start, self.stop):
            epoch, j = divmod(s, self.steps_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, idx = epoch, self.sampler.indices(epoch)
            yield idx[j * self.batch_size:(j + 1) * self.batch_size].tolist()
