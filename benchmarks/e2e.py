"""End-to-end speed of `gcomp complete` over a folder, per stage, beside cv2.inpaint and the seed's loop.

    python -m gcomp.benchmarks.e2e DIR [--model M] [--backend auto] [--iters 0,100] [--mask center]
                                       [--io-threads 4] [--batch-size 64] [--json out.json]

All in one process, on the same files and masks:
- the whole job, `Model.complete_files(DIR, OUT)` (what `gcomp complete DIR OUT` runs), at each --iters:
  images/s end to end, as a user gets it;
- each stage alone over the same files, one after the other (nothing overlapped): decode (images.read),
  prepare (mask, face crop, model input), encoder, search (the backend's loop at N iterations; none at 0),
  generate, blend (Poisson, + composite), encode + write. Their sum beside the job's time shows how much the
  job's pipeline overlaps (decode and write run in --io-threads threads beside the network);
- a cv2.imread -> cv2.inpaint(Telea, radius 3) -> cv2.imwrite loop over the same files and holes, on one
  thread and on all cores (OpenCV releases the GIL): the classical tool's end-to-end speed;
- the seed's loop (PyTorch eager, gradient to the host, numpy update: benchmarks/bench.py's baseline) at the
  model's architecture and --batch-size: its cost per image at N iterations, the ratio's denominator (needs
  torch; weights do not change timings, so random ones unless --checkpoint).
The CPU is named with its ISA flags (AVX2 / AVX512_BF16 / AMX) in the report.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from .. import __version__
from ..engine import images
from ..engine.api import open_model
from ..engine.batch import finish_batch, initial_latents
from ..engine.cpu import usable_cores
from ..engine.jobs import Item, iter_inputs
from ..engine.masks import MaskSpec
from ..engine.prepare import prepare_image
from .bench import machine_info

STAGES = ("decode", "prepare", "encoder", "search", "generate", "blend", "write")


def source_commit() -> str | None:
    """The git commit of the gcomp being measured (with "+changes" if its tree differs), None outside a checkout:
    figures from two commits are told apart by it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = rev.stdout.split()
    # an installed copy inside some other checkout (a venv in a project's folder) is not that checkout's commit
    if rev.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root:
        return None
    return lines[1] + ("+changes" if dirty.stdout.strip() else "")


def list_files(root: Path, limit: int | None) -> list[Item]:
    items = [Item(path, key, Path(key)) for path, key in iter_inputs(root)]
    return items[:limit] if limit else items


def time_stages(model, items: list[Item], opts, out: Path) -> dict:
    """Each stage over every file, alone and in turn: seconds per stage (what the job would cost unoverlapped)."""
    be, size = model.backend, model.size
    spec = MaskSpec.parse(opts.mask)
    enc = model.encoder(opts.init)
    t: dict[str, float] = dict.fromkeys(STAGES, 0.0)
    bs = opts.batch_size
    for lo in range(0, len(items), bs):
        chunk = items[lo:lo + bs]
        t0 = time.perf_counter()
        decoded = [images.read(it.path) for it in chunk]
        t1 = time.perf_counter()
        batch = [prepare_image(it, im, spec, size, opts.seed, opts.search.weighted, opts.face, weights=opts.searches)
                 for it, im in zip(chunk, decoded)]
        t2 = time.perf_counter()
        y = np.stack([p.y for p in batch])
        z = initial_latents([p.item.key for p in batch], 1, be.info.zdim, opts.seed) if enc is None else \
            enc(y, np.stack([p.known_small for p in batch]))
        t3 = time.perf_counter()
        if opts.search.iters:
            z = be.search(z, y, np.stack([p.w for p in batch]), opts.search).z
        t4 = time.perf_counter()
        x = be.generate(z)
        t5 = time.perf_counter()
        outs = finish_batch(batch, x, opts)  # the job's own blend and composite
        t6 = time.perf_counter()
        for p, arr in zip(batch, outs):
            images.write(out / p.item.key, arr)  # creates the folder on its first file, as in the job
        t7 = time.perf_counter()
        for name, a, b in zip(STAGES, (t0, t1, t2, t3, t4, t5, t6), (t1, t2, t3, t4, t5, t6, t7)):
            t[name] += b - a
    return t


def telea_loop(items: list[Item], spec: MaskSpec, size: int, seed: int, out: Path, threads: int) -> float:
    """cv2.imread -> cv2.inpaint(Telea) -> cv2.imwrite per file on `threads` threads: images/s."""
    def one(it: Item) -> None:
        img = cv2.imread(str(it.path), cv2.IMREAD_COLOR)
        hole = (spec.known(it.key, img.shape[:2], size, seed) < 0.5).astype(np.uint8) * 255
        cv2.imwrite(str(out / Path(it.key).name), cv2.inpaint(img, hole, 3, cv2.INPAINT_TELEA))

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if threads == 1:
        for it in items:
            one(it)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, items))
    return len(items) / (time.perf_counter() - t0)


def seed_loop_ms(model, batch: int, steps: int, checkpoint: str | None, tmp: Path) -> float | None:
    """The seed loop's milliseconds per step at `batch` (None without torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    from ..train.checkpoint import save
    from ..train.model import ModelConfig, build
    from .bench import seed_loop_run

    if checkpoint is None:
        meta = model.info.meta.get("model_config")
        cfg = ModelConfig(**(json.loads(meta) if isinstance(meta, str) else meta or {}))
        checkpoint = save(tmp / "random.pt", cfg, *build(cfg))
    run = seed_loop_run(checkpoint, batch)
    run.open()
    run.call()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        run.call()
    ms = (time.perf_counter() - t0) / steps * 1e3
    run.close()
    return ms


def e2e(data, model=None, backend="auto", iters=(0, 100), mask="center", io_threads=4, batch_size=64,
        limit=None, checkpoint=None, seed_steps=3, log=print) -> dict:
    data = Path(data)
    items = list_files(data, limit)
    if not items:
        raise ValueError(f"no images under {data}")
    report = {"gcomp_version": __version__, "commit": source_commit(),
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(), "data": str(data), "images": len(items), "mask": mask,
              "io_threads": io_threads, "batch_size": batch_size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="gcomp-e2e-") as tmp_s, open_model(model, backend=backend) as m:
        tmp = Path(tmp_s)
        report["model"] = str(m.source)
        report["backend"] = {"name": m.name, **m.backend.settings()}
        sub = data if limit is None else _linked(items, tmp / "input")
        spec = MaskSpec.parse(mask)
        warm = m.options(mask=mask, iters=max(iters), batch_size=batch_size, io_threads=io_threads, overwrite=True)
        m.complete_files(_linked(items[:batch_size], tmp / "warm-up"), tmp / "warm-up-out", warm, log=lambda msg: None)
        for n in iters:  # (the warm-up job above: first-call costs of the runtimes are not the job's)
            opts = m.options(mask=mask, iters=n, batch_size=batch_size, io_threads=io_threads, overwrite=True)
            out = tmp / f"out-{n}"
            summary = m.complete_files(sub, out, opts, log=lambda msg: None)
            shutil.rmtree(out, ignore_errors=True)
            (tmp / "stages").mkdir(exist_ok=True)
            stages = time_stages(m, items, opts, tmp / "stages")
            shutil.rmtree(tmp / "stages", ignore_errors=True)
            run = {"iters": n, "blend": opts.blend, "seconds": summary.seconds, "images_per_s": summary.images_per_s,
                   "done": summary.done, "failed": len(summary.failed),
                   "stages_s": {k: round(v, 4) for k, v in stages.items()},
                   "stages_sum_s": round(sum(stages.values()), 4)}
            report["runs"].append(run)
            log(f"iters {n}: {run['images_per_s']:.1f} images/s end to end ({summary.done} images, "
                f"{summary.seconds:.2f} s); stages alone: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                + f" s (sum {run['stages_sum_s']:.2f} s)")
        cores = usable_cores()
        report["telea"] = {str(k): telea_loop(items, spec, m.size, 0, tmp / f"telea-{k}", k) for k in sorted({1, cores})}
        log("cv2.inpaint Telea loop: " + ", ".join(f"{v:.0f} images/s on {k} thread(s)" for k, v in report["telea"].items()))
        ms = seed_loop_ms(m, batch_size, seed_steps, checkpoint, tmp)
    report["seed_loop"] = None if ms is None else {"batch": batch_size, "ms_per_step": ms}
    best_telea = max(report["telea"].values())
    for run in report["runs"]:
        run["vs_telea_best"] = run["images_per_s"] / best_telea
        if ms is not None and run["iters"]:
            seed_ips = batch_size / (ms / 1e3 * run["iters"])  # the seed loop's images/s at these iterations
            run["seed_loop_images_per_s"] = seed_ips
            run["speedup_vs_seed_loop"] = run["images_per_s"] / seed_ips
    if ms is not None:
        log(f"seed loop: {ms:.1f} ms per step at batch {batch_size}")
    return report


def _linked(items: list[Item], root: Path) -> Path:
    """The first --limit files as links in a folder of their own, for the job to run over."""
    for it in items:
        dst = root / it.key
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(it.path).resolve(), dst)
    return root


def heading(report: dict, what: str) -> str:
    """A report's first words: the gcomp and commit measured, what, when, and the machine with its ISA flags."""
    m = report["machine"]
    commit = f" ({report['commit'][:12]}{'+changes' if report['commit'].endswith('+changes') else ''})" \
        if report.get("commit") else ""
    return (f"gcomp {report['gcomp_version']}{commit} {what}, {report['timestamp']}: {m['gpu'] or m['cpu']} "
            f"({m['cores']} cores, {m['cpu_kind']}; {' '.join(m['cpu_flags'])})")


def write_report(report: dict, path: str | None, quiet: bool = False) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str))
        if not quiet:
            print(f"wrote {path}")


def table(report: dict) -> str:
    lines = [heading(report, "e2e") + f", backend {report['backend']['name']}, "
             f"{report['images']} images of {report['data']}, mask {report['mask']}, batch {report['batch_size']}, "
             f"{report['io_threads']} I/O threads", "",
             "| iterations | images/s end to end | x Telea (best) | x seed loop | " + " | ".join(STAGES) + " | sum of stages s | job s |",
             "| --- " * (6 + len(STAGES)) + "|"]
    for r in report["runs"]:
        seed = f"{r['speedup_vs_seed_loop']:.1f}" if "speedup_vs_seed_loop" in r else "—"
        lines.append(f"| {r['iters']} | {r['images_per_s']:.1f} | {r['vs_telea_best']:.3f} | {seed} | "
                     + " | ".join(f"{r['stages_s'][k]:.2f}" for k in STAGES)
                     + f" | {r['stages_sum_s']:.2f} | {r['seconds']:.2f} |")
    lines.append("")
    lines.append("cv2.inpaint Telea loop (imread, inpaint, imwrite): " + ", ".join(
        f"{v:.0f} images/s on {k} thread(s)" for k, v in report["telea"].items()))
    if report["seed_loop"]:
        lines.append(f"seed loop: {report['seed_loop']['ms_per_step']:.1f} ms per step at batch {report['seed_loop']['batch']}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="a folder of images (searched recursively)")
    ap.add_argument("--model", default=None, help="as gcomp complete's --model (default: the bundled model)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--iters", default="0,100", help="comma-separated iteration counts")
    ap.add_argument("--mask", default="center")
    ap.add_argument("--io-threads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="only the first N files")
    ap.add_argument("--checkpoint", default=None, help="a .pt for the seed loop (default: random weights)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    report = e2e(a.data, a.model, a.backend, [int(x) for x in a.iters.split(",")], a.mask, a.io_threads,
                 a.batch_size, a.limit, a.checkpoint)
    print(table(report))
    write_report(report, a.json)


if __name__ == "__main__":
    main()
