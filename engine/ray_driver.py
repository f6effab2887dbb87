"""Batch completion across many GPUs and machines on Ray Data: `gcomp complete --ray`.

The pipeline (one Ray Dataset, streamed):

  driver      lists the input (names only) and skips finished outputs with the same helper as the
              single-process driver (`list_todo`), cuts what is left into batches of
              `options.batch_size` in listing order, and makes one row per batch:
              `ray.data.from_items(rows, override_num_blocks=len(rows))`, so every actor gets work.
  CPU tasks   `map(_decode)`: read + mask + model-size input for each image of a batch
              (`engine.prepare.prepare`). A per-image problem (corrupt file, missing mask)
              becomes an error entry that travels on; it never raises.
  actor pool  `map_batches(_Completer, concurrency=workers, num_gpus=gpus_per_worker)`: one
              model per actor (`gcomp.open_model` in __init__), `Model.complete_prepared` (the batch
              work the single-process driver runs) on each batch, each output written atomically by the
              actor with `images.write` and the same temporary-name tag. Returns one status row
              per image: key, done/failed, error.
  driver      folds the rows into the same `Summary` and writes the same gcomp-summary.json.

Why one row per batch rather than one row per image with `map_batches(batch_size=B)`: Ray
cuts batches along block and bundle boundaries and does not keep order, so the images that
share a batch would differ from the single-process run's. Latents and random masks are seeded
per image name and BatchNorm runs on its running statistics, so in exact arithmetic an image's
result does not depend on its batch neighbours; in floating point it can (a GEMM or cuDNN
algorithm picked per batch size, a static TensorRT batch padded differently). Making the
batches here, exactly as `complete()` does, gives byte-identical outputs on every backend by
construction. (Measured: on ONNX Runtime CPU the tiny test model gives bit-identical latents
for any split of a batch, so the risk is on the GPU backends.)
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import images
from .api import model_path, open_model
from .backends import BackendError, backend_for
from .batch import progress_writer
from .cpu import usable_cores
from .images import ImageError, OutputError
from .jobs import (Item, Summary, check_job, error_text, finish_summary, job_settings, list_todo, resume_note,
                   single_image_job, start_writing, to_stderr)
from .masks import MaskError, MaskSpec
from .options import CompleteOptions, Settings
from .prepare import Prepared, prepare
from .progress import ProgressBar

INSTALL_HINT = "pip install 'gcomp[ray]'"
CPU_ACTOR_CPUS = 0.5  # a CPU-only actor's reservation: leaves room for the decode tasks (see _connect)
#: errors that stop the whole job with a one-line message, as in the CLI (checkpoint problems arrive as BackendError)
USER_ERRORS = (BackendError, ImageError, OutputError, MaskError, ValueError)


class RayError(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayError(f"--ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


# -- the stages ----------------------------------------------------------------------------------

def _decode(row: dict, *, spec: MaskSpec, size: int, seed: int, weighted: bool, face: str, blends: bool,
            weights: bool = True) -> dict:
    """A CPU task: prepare every image of one batch; per-image errors become ('error', ...) entries.
    The batch travels pickled in one binary column (Prepared holds arrays of different shapes)."""
    entries = []
    for path, key, out in json.loads(row["items"]):
        item = Item(Path(path), key, Path(out))
        notes: list[str] = []
        try:
            entries.append(("ok", prepare(item, spec, size, seed, weighted, face, notes.append, blends, weights),
                            NOTE_SEP.join(notes)))
        except (ImageError, MaskError, OSError) as e:
            entries.append(("error", item, str(e)))
        except MemoryError:  # one image too large for this worker fails alone, as in the local driver
            entries.append(("error", item, f"{item.path}: not enough memory to prepare it"))
    return {"chunk": row["chunk"], "payload": pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)}


NOTE_SEP = "\0"  # between one image's notes in its row: no file name holds it (a newline can)
COLUMNS = ("chunk", "key", "file", "status", "error", "note", "worker", "search_seconds")
FATAL = "fatal"  # a status row carrying a job-level error (pickled) from an actor


class _Completer:
    """An actor: one backend session for its lifetime; completes and writes whole batches.

    A job-level error (the backend cannot run here, an optimizer it refuses) comes back as a
    FATAL row holding the pickled exception: Ray Data would otherwise wrap it in a
    UserCodeException that keeps only its text and traceback."""

    def __init__(self, model: str, backend: str, device: str, backend_options: dict, opts: CompleteOptions,
                 tag: str, progress_dir: str | None):
        self.error: BaseException | None = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        try:
            self.model = open_model(model, backend=backend, device=device, **backend_options)
            self.model.encoder(opts.init)  # a missing or foreign encoder fails here, once
        except USER_ERRORS as e:
            self.error = e
        self.opts, self.tag, self.progress_dir = opts, tag, progress_dir
        self.pool = ThreadPoolExecutor(max(1, opts.io_threads), thread_name_prefix="gcomp-write")

    def __call__(self, batch: dict) -> dict:
        try:
            if self.error is not None:
                raise self.error
            return self._complete(batch)
        except USER_ERRORS as e:
            return {"chunk": np.asarray([-1]), "key": np.asarray([""], object), "file": np.asarray([""], object),
                    "status": np.asarray([FATAL], object), "error": np.asarray([pickle.dumps(e).hex()], object),
                    "note": np.asarray([""], object), "worker": np.asarray([self.worker], object),
                    "search_seconds": np.asarray([0.0])}

    def _complete(self, batch: dict) -> dict:
        rows: dict[str, list] = {c: [] for c in COLUMNS}

        def row(chunk, item: Item, status: str, error: str = "", note: str = "", seconds: float = 0.0):
            for c, v in zip(COLUMNS, (chunk, item.key, str(item.path), status, error, note, self.worker, seconds)):
                rows[c].append(v)

        for chunk, payload in zip(batch["chunk"], batch["payload"]):
            chunk = int(chunk)
            entries = pickle.loads(payload)
            for kind, item, err in entries:
                if kind == "error":
                    row(chunk, item, "failed", err)
            good: list[Prepared] = [p for kind, p, _ in entries if kind == "ok"]
            notes = {p.item.key: n for kind, p, n in entries if kind == "ok"}
            if not good:
                continue
            on_prog = None
            if self.progress_dir is not None:
                on_prog = progress_writer(self.model.backend, good, Path(self.progress_dir), chunk, self.opts.search.iters)
            outs, stats = self.model.complete_prepared(good, self.opts, on_prog)
            futs = [self.pool.submit(images.write, p.item.out, arr, self.tag) for p, arr in zip(good, outs)]
            for i, (p, fut) in enumerate(zip(good, futs)):
                seconds = stats["seconds"] if i == 0 else 0.0  # once per batch
                try:
                    fut.result()
                    row(chunk, p.item, "done", note=notes[p.item.key], seconds=seconds)
                except (ImageError, OSError) as e:
                    row(chunk, p.item, "failed", str(e), seconds=seconds)
        return {c: np.asarray(v, dtype=np.float64 if c == "search_seconds" else np.int64 if c == "chunk" else object)
                for c, v in rows.items()}


def _probe(model: str, backend: str, device: str, backend_options: dict, opts: CompleteOptions) -> dict:
    """A task with a worker's resources: open the model once to learn what the decode tasks and
    the summary need (size, backend, the job's settings with the model's recommendation applied) and to
    fail early and clearly."""
    with open_model(model, backend=backend, device=device, **backend_options) as m:
        return {"notes": m.notes, "size": m.size, "options": m.options(opts)}


# -- connecting ----------------------------------------------------------------------------------

def _connect_keeping_sigterm(ray, address: str | None, min_cpus: float) -> bool:
    """_connect, with the caller's SIGTERM handler put back: ray.init installs its own (sys.exit(15) or (1)), which
    would end `gcomp complete --ray` without its line on how far it got, its summary or exit 143."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        return _connect(ray, address, min_cpus)
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)


def _connect(ray, address: str | None, min_cpus: float) -> bool:
    """Join or start Ray; True when this call did (so the caller shuts it down afterwards)."""
    if ray.is_initialized():
        return False  # the caller's instance (a notebook, a test): use it and leave it running
    kw = dict(include_dashboard=False, logging_level=logging.WARNING)
    # A local instance gets enough logical CPUs for the actors plus at least one decode task:
    # actors that reserve every CPU would starve the decode tasks and the pipeline would hang.
    local_cpus = max(usable_cores(), math.ceil(min_cpus))
    if address in (None, "local"):
        ray.init(num_cpus=local_cpus, **kw)
        return True
    if address == "auto":
        # 'auto' joins the cluster this machine belongs to (RAY_ADDRESS, or one started here
        # with `ray start`), else starts a private local instance. ray.init(address=None) does
        # that search too, but a local instance should get the CPU count above, and num_cpus
        # may not be passed when joining a cluster; so: try joining (ray.init(address="auto")
        # raises ConnectionError at once when no cluster runs), then start one.
        try:
            ray.init(address="auto", **kw)
            return True
        except ConnectionError:
            ray.init(num_cpus=local_cpus, **kw)
            return True
    try:
        ray.init(address=address, **kw)
    except Exception as e:  # ConnectionError, a missing ray[client] for ray://, a bad address
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = "; ray:// needs pip install 'ray[client]'" if address.startswith("ray://") else ""
        raise RayError(f"cannot connect to Ray at {address}: {first}{hint}") from None
    return True


def _user_error(ray, e: BaseException) -> BaseException | None:
    """The user-facing error (bad model, unwritable output) inside a Ray task failure."""
    kinds = USER_ERRORS
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, kinds) and not isinstance(e, ray.exceptions.RayError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


# -- the driver ----------------------------------------------------------------------------------

def complete_ray(input: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike | None = None, *,
                 address: str | None = "auto", workers: int = 2, gpus_per_worker: float | None = None,
                 cpus_per_worker: float | None = None, backend: str = "auto", device: str = "cpu",
                 options: CompleteOptions | None = None, backend_options: dict | None = None,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> Summary:
    """`complete()` on a Ray cluster: the same outputs, summary and resume rule, many workers.

    address: 'auto' (the cluster this machine is part of, else a local instance), None/'local'
    (always a local instance), or an address ('host:6379', 'ray://host:10001').
    workers: actors, each with its own backend session; gpus_per_worker: GPUs each reserves
    (default 1 when device is cuda, else 0; fractions share a GPU). cpus_per_worker: CPUs each
    reserves (default 1 with GPUs, 0.5 without, so decode tasks still find a CPU).
    The input and output must be on storage the driver and every worker see.
    """
    opts = options or CompleteOptions()
    log = log or to_stderr
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    src, dst, spec, out_dir = check_job(input, output, opts)
    ray = import_ray()  # before any work: a missing Ray is a one-line error
    t0 = time.perf_counter()
    model = model_path(model)  # None: the default; "small": a bundled model by name
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if device.startswith("cuda") else 0.0
    if cpus_per_worker is None:
        cpus_per_worker = 1.0 if gpus_per_worker > 0 else CPU_ACTOR_CPUS
    # Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES: inside it, its GPU is cuda:0.
    actor_device = "cuda" if gpus_per_worker > 0 and device.startswith("cuda") else device
    bopts = dict(backend_options or {})
    todo, skipped = list_todo(src, dst, opts, log)  # log: the note on linked folders not followed
    ray_info = {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker,
                "cpus_per_worker": cpus_per_worker}
    if not todo:  # nothing to do: no need to start Ray or load the model
        name = backend_for(model) if backend == "auto" else backend
        unopened = Settings.resolve(opts, None, model=str(model), backend=name, device=device)  # no model: no encoder
        summary = Summary(skipped=skipped, settings=job_settings(src, dst, spec, unopened))
        summary.ray = ray_info
        start_writing(out_dir, opts)
        return finish_summary(summary, out_dir, opts, t0, write=not single_image_job(src, dst))

    started = _connect_keeping_sigterm(ray, address, workers * cpus_per_worker + 1)
    bar = None
    try:
        try:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False  # ours counts images
            resources = {"num_cpus": cpus_per_worker}
            if gpus_per_worker > 0:
                resources["num_gpus"] = gpus_per_worker
            probe = ray.remote(**resources)(_probe)
            info = ray.get(probe.remote(str(model), backend, actor_device, bopts, opts))
            ray_info["startup_seconds"] = round(time.perf_counter() - t0, 2)
            for note in info["notes"]:
                log(note if note.startswith("warning:") else f"note: {note}")
            if images.max_pixels_warning():  # (this process's environment; the decode tasks read their own)
                log(images.max_pixels_warning())
            # the job's Settings, resolved once by the model when the probe opened it; the device as the user named it
            opts = replace(info["options"], device=device)
            tag = start_writing(out_dir, opts)  # the model opened and the settings passed its checks: now the folder
            summary = Summary(skipped=skipped, settings=job_settings(src, dst, spec, opts))
            summary.ray = ray_info
            note = resume_note(summary, out_dir, len(todo), single_image_job(src, dst))
            if note:
                log(note)

            bs = opts.batch_size
            rows = [{"chunk": c, "items": json.dumps([[str(it.path), it.key, str(it.out)] for it in todo[i:i + bs]])}
                    for c, i in enumerate(range(0, len(todo), bs))]
            progress_dir = str(out_dir) if opts.save_progress else None  # snapshots go under out/_gcomp_progress
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # a block per batch
            ds = ds.map(_decode, fn_kwargs=dict(spec=spec, size=info["size"], seed=opts.seed,
                                                weighted=opts.search.weighted, face=opts.face,
                                                blends=opts.blend.kind != "none", weights=opts.searches))
            with warnings.catch_warnings():
                # max_restarts has no named parameter in map_batches: Ray 2.60 warns about any extra remote
                # argument (a RayDeprecationWarning on stderr in every run); the argument still applies.
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
                ds = ds.map_batches(
                    # Two batches in flight per actor (one running, one queued): Ray 2.60's default, pinned so that
                    # another Ray version's default cannot change it; a batch is seconds of work, and a deeper
                    # queue holds a job's last batches in one actor while the others idle.
                    _Completer, batch_size=1, batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
                    fn_constructor_kwargs=dict(model=str(model), backend=backend, device=actor_device,
                                               backend_options=bopts, opts=opts, tag=tag, progress_dir=progress_dir),
                    # no actor restarts: Ray Data keeps the actors' constructor arguments in the object store, from
                    # where a restart cannot be relied on (ray-project/ray#53727; with restarts Ray logs an error
                    # line saying so on every run). A lost actor fails the job; a rerun skips finished images.
                    max_restarts=0, **resources)

            order = {it.key: i for i, it in enumerate(todo)}
            per_worker: dict[str, int] = {}
            failed: list[tuple[int, dict]] = []
            bar = ProgressBar(progress, len(todo))
            for r in ds.iter_rows():
                for line in filter(None, r["note"].split(NOTE_SEP)):  # prepare()'s own "note: ..." lines
                    log(line)
                summary.search_seconds += float(r["search_seconds"])
                if r["status"] == FATAL:
                    raise pickle.loads(bytes.fromhex(r["error"]))
                if r["status"] == "done":
                    summary.done += 1
                    per_worker[r["worker"]] = per_worker.get(r["worker"], 0) + 1
                else:
                    text = error_text(r["key"], r["file"], r["error"])  # the summary says what stderr says
                    log(f"error: {text}")
                    failed.append((order[r["key"]], {"file": r["file"], "error": text}))
                bar.advance()
            summary.failed = [f for _, f in sorted(failed, key=lambda t: t[0])]  # listing order, as complete()
            ray_info["images_per_worker"] = per_worker
        except Exception as e:
            cause = _user_error(ray, e)
            if cause is not None:
                raise cause from None
            raise
    finally:
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()  # a local instance stops; a cluster stays up (we only disconnect)
    return finish_summary(summary, out_dir, opts, t0, write=not single_image_job(src, dst))
