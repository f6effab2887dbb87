"""Sweep backends, batch sizes and precisions with `gcomp bench`; write JSON and a Markdown summary.

    python benchmarks/sweep.py --device cpu --iters 20 --out benchmarks/results
    python benchmarks/sweep.py --device cuda --backend torch,onnxruntime --batch-size 64,256,1024

Each run of `gcomp.benchmarks.bench.bench` measures the seed-faithful baseline in the same process, so every
ratio in the summary is against a baseline timed minutes apart on the same machine.
"""
from __future__ import annotations

import argparse
import re
from datetime import date
from pathlib import Path

from gcomp.benchmarks.bench import bench, write_json


def machine_tag(m: dict) -> str:
    name = m["gpu"] or f"{m['cpu']}-{m['cores']}c"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def summary_md(report: dict, full_iters: int) -> str:
    m = report["machine"]
    lines = [f"# gcomp bench on {m['gpu'] or m['cpu']} ({m['cores']} cores), {date.today()}", "",
             f"Libraries: {', '.join(f'{k} {v}' for k, v in m['libraries'].items())}. "
             f"Timed steps per run: {report['iters']} after {report['warmup']} warm-up steps"
             f"{', interleaved in %d rounds' % report['rounds'] if report.get('rounds', 1) > 1 else ''}; "
             f"images/s is for {full_iters} iterations per image (the seed's default).", "",
             "| run | batch | mean ms/step | median | p90 | p99 | images/s @ %d it | speed-up vs seed loop | GFLOP/s |" % full_iters,
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    swept = report.get("swept")
    for r in report["runs"]:
        s, ms = r["stats"], r["stats"]["step_ms"]
        ips = r["batch"] / (ms["mean"] / 1e3 * full_iters)
        star = " **(best)**" if swept and r["name"] in report["best"] else ""
        lines.append(f"| {r['name']}{star} | {r['batch']} | {ms['mean']:.1f} | {ms['median']:.1f} | {ms['p90']:.1f} | "
                     f"{ms['p99']:.1f} | {ips:.3f} | {s['speedup_vs_baseline']:.2f}x | {s['achieved_flops'] / 1e9:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the default architecture, random weights)")
    ap.add_argument("--backend", default="torch,onnxruntime")
    ap.add_argument("--batch-size", default="1,16,64")
    ap.add_argument("--precision", default="fp32,fp16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", default="", help="thread counts to sweep, e.g. 1,2 (default: the backend's)")
    ap.add_argument("--streams", default="", help="stream counts to sweep, e.g. 1,2 (default: the backend's)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="interleave the runs in this many passes (see gcomp bench)")
    ap.add_argument("--full-iters", type=int, default=1000, help="iterations per image for the images/s column")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    report = bench(a.model, split(a.backend), [int(b) for b in split(a.batch_size)], a.iters, split(a.precision),
                   a.device, log=print, threads=[int(t) for t in split(a.threads)] or [None],
                   streams=[int(n) for n in split(a.streams)] or [None], rounds=a.rounds)
    tag = machine_tag(report["machine"])
    out = Path(a.out)
    write_json(report, out / f"{tag}.json")
    (out / f"{tag}.md").write_text(summary_md(report, a.full_iters))
    print((out / f"{tag}.md").read_text())


if __name__ == "__main__":
    main()
