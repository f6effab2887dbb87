"""Jobs over folder trees: listing the inputs, shards, the resume rule, output paths, the summary.

Every driver (the local one in complete.py, the Ray driver) lists and resumes through these, so a job
gives the same outputs and summary whichever runs it.
"""
from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from .. import __version__
from . import images
from .images import TMP_PREFIX, ImageError, OutputError
from .masks import MaskSpec
from .options import CompleteOptions

SUMMARY_NAME = "gcomp-summary.json"
PROGRESS_DIR = "_gcomp_progress"


@dataclass
class Item:
    path: Path
    key: str  # path relative to the input root, '/'-separated: names masks, seeds and outputs
    out: Path


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


def list_todo(src: Path, dst: Path, opts: CompleteOptions) -> tuple[list[Item], int]:
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


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TMP_PREFIX}probe-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"output folder {folder} is not writable: {e.strerror or e}") from None


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
