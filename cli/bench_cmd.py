"""`gcomp bench`: latency and throughput of the backends beside the seed's own loop."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .errors import fail, output_file, writing


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _ints(option: str, s: str) -> list[int]:
    try:
        if s.strip() and any(not x.strip() for x in s.split(",")):  # "1,,2": a typo, not two sizes (empty: none given)
            raise ValueError
        return [int(x) for x in _list(s)]
    except ValueError:
        raise fail(f"{option} takes comma-separated whole numbers (e.g. 1,16,64), got {s!r}") from None


def bench(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="A checkpoint; default: the default architecture with random weights (timings do not depend on weights)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="Comma-separated: torch, onnxruntime, openvino, tensorrt."),
    batch_size: str = typer.Option("64", "--batch-size", "-b", help="Comma-separated batch sizes; the seed loop is timed at each, so every speed-up compares equal batches."),
    iters: int = typer.Option(20, "--iters", help="Timed steps per run; images/s is reported for this many iterations per image."),
    precision: str = typer.Option("fp32", "--precision", help="Comma-separated: fp32, fp16, bf16 (onnxruntime: the export's precision; openvino: its inference precision)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed steps first."),
    threads: str = typer.Option("", "--threads", help="Comma-separated CPU thread counts to sweep (onnxruntime, openvino); default: all cores."),
    streams: str = typer.Option("", "--streams", help="Comma-separated stream counts to sweep (onnxruntime, openvino): the batch is split across that many concurrent requests."),
    rounds: int = typer.Option(1, "--rounds", help="1: time each run in one block. N > 1: load every run, then N "
                               "interleaved passes, so a noisy machine slows all runs alike: for backend-vs-backend "
                               "comparisons (the seed loop runs slower interleaved, so its ratios are too high)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
):
    """Time the seed-faithful loop and each backend on the same synthetic inputs, in one process."""
    # parsed before torch loads (seconds); run() checks the values before any work
    batch_sizes, thread_counts, stream_counts = (_ints("--batch-size", batch_size), _ints("--threads", threads),
                                                 _ints("--streams", streams))
    output_file(json_path, "--json")  # before the benchmark, not after it
    try:
        import torch  # noqa: F401  (the baseline is the seed's PyTorch loop)
    except ImportError:
        raise fail("gcomp bench runs the seed's PyTorch loop as its baseline: pip install 'gcomp[train]'") from None
    from rich.console import Console

    from ..benchmarks.bench import bench as run, write_json
    from ..engine.backends import BackendError
    from ..train.checkpoint_file import CheckpointError

    try:
        report = run(model, _list(backend), batch_sizes, iters, _list(precision), device, warmup,
                     log=lambda m: typer.echo(m, err=True), threads=thread_counts or [None],
                     streams=stream_counts or [None], rounds=rounds)
    except (BackendError, CheckpointError, ValueError) as e:
        raise fail(str(e)) from None
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and CI: never wrap the table
    console.print(_table(report))
    if report["swept"]:
        typer.echo("* the fastest setting of its backend, precision and batch size")
    if json_path:
        with writing(json_path, "--json"):
            write_json(report, json_path)
        typer.echo(f"wrote {json_path}")


def _table(report: dict):
    """The report in brief: per run n, median, min, max, stdev and p90 of the per-step time, throughput and the
    speed-up over the seed loop at the run's own batch size; the full statistics and settings are in --json."""
    from rich.markup import escape
    from rich.table import Table

    m, mod = report["machine"], report["model"]
    title = (f"gcomp bench {report['gcomp_version']}, {report['timestamp']}: {m['gpu'] or m['cpu']} "
             f"({m['cores']} cores, {m['cpu_kind']}), {report['iters']} iterations per image")
    caption = (f"ms per step over n timed calls. speed-up: images/s over the seed loop's at the same batch size, "
               f"timed in this run. Model {mod['source']}: weights {mod['weights_id']}, sha256 {mod['sha256'][:16]}")
    t = Table(title=escape(title), caption=escape(caption), caption_justify="left")  # a path may hold [brackets]
    for col in ("run", "batch", "n", "median ms", "min", "max", "stdev", "p90", "images/s",
                "speed-up (same batch)", "GFLOP/s", "of peak"):
        t.add_column(col, justify="right" if col != "run" else "left")
    for r in report["runs"]:
        s, ms = r["stats"], r["stats"]["step_ms"]
        share = s["share_of_peak"]
        best = report["swept"] and r["name"] in report["best"]
        t.add_row(r["name"] + (" *" if best else ""), str(r["batch"]), str(ms["n"]),
                  *(f"{ms[k]:.1f}" for k in ("median", "min", "max", "stdev", "p90")),
                  f"{s['images_per_s']:.3f}", f"{s['speedup_vs_baseline']:.2f}x", f"{s['achieved_flops'] / 1e9:.0f}",
                  f"{share:.1%}" if share else "unknown")
    return t
