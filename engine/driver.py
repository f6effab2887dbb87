"""The local driver of a completion job over files: what `gcomp complete` (without --ray) runs.

It lists the input names (jobs.py), decodes in a thread pool one batch ahead of the search (prepare.py),
runs each batch (batch.py) on an open backend with the job's resolved Settings, and writes each result
atomically; finished outputs are skipped on a rerun, so an interrupted job resumes where it stopped. Call it
through the public API, `gcomp.open_model(...).complete_files(input, output)`, which resolves the settings.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

from . import images
from .backends import Backend
from .batch import finish_batch, generate_batch, progress_writer
from .encoder import Encoder
from .images import ImageError
from .jobs import (Interrupted, Item, Summary, check_job, error_text, finish_summary, job_settings, list_todo,
                   nothing_to_do, resume_note, single_image_job, start_writing, to_stderr)
from .masks import MaskError
from .options import Settings
from .prepare import Prepared, prepare
from .progress import ProgressBar


def run_files(be: Backend, encoder: Encoder | None, input, output, opts: Settings, notes: Sequence[str] = (),
              progress: bool = True, log: Callable[[str], None] | None = None) -> Summary:
    """Complete every image under `input` into `output` (same relative names and formats) on the open backend
    `be` with the job's resolved settings (Model.options) and their encoder; `notes`: the backend's, logged once.

    Per-image problems (unreadable file, missing mask) are reported through `log` and in the
    summary; they never stop the rest. Problems with the whole job (output folder, mask) raise.
    """
    log = log or to_stderr
    src, dst, spec, out_dir = check_job(input, output, opts)
    t0 = time.perf_counter()
    tag = start_writing(out_dir, opts)  # every check has passed: the output folder is created here
    for note in notes:
        log(note if note.startswith("warning:") else f"note: {note}")
    if images.max_pixels_warning():
        log(images.max_pixels_warning())
    summary = Summary(settings=job_settings(src, dst, spec, opts))
    todo, summary.skipped = list_todo(src, dst, opts, log)
    if not todo and not summary.skipped:
        log(f"note: {nothing_to_do(src, opts.shard)}")
    note = resume_note(summary, out_dir, len(todo), single_image_job(src, dst))
    if note:
        log(note)

    def fail(item: Item, err: Exception) -> None:
        text = error_text(item.key, str(item.path), err)  # the summary says what stderr says
        log(f"error: {text}")
        summary.failed.append({"file": str(item.path), "error": text})

    bs = opts.batch_size
    blends = opts.blend.kind != "none"  # only then is a very large hole worth a note on its memory
    chunks = [todo[i:i + bs] for i in range(0, len(todo), bs)]
    size = be.info.size
    pool = ThreadPoolExecutor(max(1, opts.io_threads), thread_name_prefix="gcomp-io")
    # One thread blends and composites batch k (finish_batch) while this one runs the networks on batch k + 1;
    # it hands each output to the I/O pool to be written.
    finisher = ThreadPoolExecutor(1, thread_name_prefix="gcomp-finish")
    finishing: Future | None = None  # the batch being finished: its writes, once submitted
    writes: list[tuple[Item, Future]] = []
    # Outputs written without error, counted as each write finishes (next() on a count is atomic): what Ctrl-C
    # reports. summary.done lags behind it, and a Ctrl-C inside _drain would count some writes twice there.
    written = itertools.count()
    bar = ProgressBar(progress, len(todo))
    ahead: deque = deque()
    try:
        def submit(chunk):
            return [(it, pool.submit(prepare, it, spec, size, opts.seed, opts.search.weighted, opts.face, log, blends,
                                     opts.searches)) for it in chunk]

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
                except MemoryError:  # one image too large for this machine fails alone; the rest of the job goes on
                    fail(item, ImageError(f"{item.path}: not enough memory to prepare it"))
                    bar.advance()
            if batch:
                on_prog = progress_writer(be, batch, dst if out_dir == dst else out_dir, batch_no,
                                          opts.search.iters) if opts.save_progress else None
                x, stats = generate_batch(be, batch, opts, on_prog, encoder)
                summary.search_seconds += stats["seconds"]
                if finishing is not None:
                    writes += finishing.result()
                finishing = finisher.submit(finish_and_write, pool, batch, x, opts, tag, written)
                batch_no += 1
            writes = _drain(writes, summary, fail, bar, block=False)
        if finishing is not None:
            writes += finishing.result()
            finishing = None
        _drain(writes, summary, fail, bar, block=True)
    except KeyboardInterrupt:
        if finishing is not None:  # a finished batch's results are written too
            finishing.result()
        for futs in ahead:  # Ctrl-C: drop the decodes queued for batches that will not run; finish the writes,
            for _, fut in futs:  # whose results are already computed (each lands whole or not at all)
                fut.cancel()
        pool.shutdown(wait=True)
        done = next(written)
        summary.done, summary.interrupted = done, True  # what the folder holds now; a rerun does the rest
        finish_summary(summary, out_dir, opts, t0, write=not single_image_job(src, dst))
        raise Interrupted(done, len(todo) - done) from None
    finally:
        finisher.shutdown(wait=True)
        pool.shutdown(wait=True)
        bar.close()
    return finish_summary(summary, out_dir, opts, t0, write=not single_image_job(src, dst))


def finish_and_write(pool: ThreadPoolExecutor, batch: list[Prepared], x, opts: Settings, tag: str,
                     written) -> list[tuple[Item, Future]]:
    """finish_batch, then each output's write submitted to the I/O pool (counted in `written` once on disk)."""
    futs = []
    for p, arr in zip(batch, finish_batch(batch, x, opts)):
        fut = pool.submit(images.write, p.item.out, arr, tag)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() or next(written))
        futs.append((p.item, fut))
    return futs


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
