"""The whole `gcomp complete` job over a folder at each core count, batch size and thread setting, beside a
cv2.inpaint Telea loop on the same cores: what the defaults should be for 2 to 16 cores, measured.

    python -m gcomp.benchmarks.e2e_sweep DIR [--model small] [--cores 1,2,4,8,16] [--batch-size 64,256]
                                             [--io-threads 2,4,8] [--streams 1,2] [--rounds 2] [--json out.json]
    python -m gcomp.benchmarks.e2e_sweep --synthetic 9250 ...   # where no folder of faces is at hand

`--synthetic N` makes N synthetic 64x64 JPEG faces in 20 folders (benchmarks/synthetic.py), the shape of issue
22's folder of CelebA crops, for a machine that has no dataset (a lent GPU machine's 16 cores).

Each job is a fresh `python -m gcomp complete DIR OUT ...` process pinned to C CPUs, one per physical core before
any hyperthread sibling (sched_setaffinity in the child: ONNX Runtime and OpenVINO size their pools by it, and
`--threads C` is passed as well), so a 16-core machine measures 2, 4 and 8 cores too; its images/s are the job summary's (model loading excluded; the
process's wall time is recorded beside it). The Telea loop (imread -> inpaint -> imwrite, e2e.telea_loop) runs in
its own process on the same C CPUs with C threads. Every round runs every setting once, each round in another
order (this kind of machine drifts by up to 1.5x within minutes: compare within a round, read the medians). A job
that fails is recorded and the sweep goes on; with --json the report so far is rewritten after every job.
The table gives, per core count, each setting's median images/s and its ratio to that core count's median Telea
loop; the settings gcomp uses by default are marked.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..engine.cpu import usable_cores
from ..engine.options import CompleteOptions
from .bench import machine_info
from .e2e import heading, list_files, source_commit, telea_loop, write_report

DEFAULTS = CompleteOptions()


@dataclass(frozen=True)
class Setting:
    cores: int
    batch_size: int
    io_threads: int
    streams: int

    @property
    def is_default(self) -> bool:
        return (self.batch_size, self.io_threads, self.streams) == (DEFAULTS.batch_size, DEFAULTS.io_threads, 1)

    def label(self) -> str:
        return f"-b {self.batch_size} --io-threads {self.io_threads}" + (f" --streams {self.streams}"
                                                                          if self.streams != 1 else "")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def cpus_by_core() -> list[int]:
    """This process's CPUs, one per physical core first and their hyperthread siblings after: the first C of them
    are C cores wherever the machine has them (Linux numbers siblings next to each other on some hosts)."""
    def core(cpu: int) -> tuple[str, str]:
        top = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            return (top / "physical_package_id").read_text().strip(), (top / "core_id").read_text().strip()
        except OSError:
            return ("?", str(cpu))  # no topology: every CPU its own core

    first, siblings, seen = [], [], set()
    for cpu in sorted(os.sched_getaffinity(0)):
        (siblings if core(cpu) in seen else first).append(cpu)
        seen.add(core(cpu))
    return first + siblings


def pinned(cpus: list[int], module: str, args: list[str]) -> list[str]:
    """A command running `python -m module args` on `cpus` only: the child pins itself before it imports anything
    (no preexec_fn, which is unsafe in this process: it has threads)."""
    code = (f"import os, runpy, sys; os.sched_setaffinity(0, {sorted(cpus)!r}); sys.argv = [{module!r}] + sys.argv[1:]; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


def run_job(s: Setting, cpus: list[int], data: Path, out: Path, model: str, backend: str, mask: str) -> dict:
    """One whole job in its own process on `cpus` (s.cores of them): the summary's images/s and seconds, and the
    wall time."""
    args = ["complete", str(data), str(out), "--model", model, "--backend", backend, "--mask", mask,
            "--batch-size", str(s.batch_size), "--io-threads", str(s.io_threads), "--threads", str(s.cores),
            "--overwrite", "--no-progress"]
    if s.streams != 1:
        args += ["--streams", str(s.streams)]
    cmd = pinned(cpus, "gcomp", args)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"gcomp {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    summary = json.loads((out / "gcomp-summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"images_per_s": summary["images_per_s"], "seconds": summary["seconds"], "done": summary["done"],
            "failed": len(summary["failed"]), "process_wall_s": round(wall, 3)}


def run_telea(cpus: list[int], data: Path, mask: str, size: int, out: Path) -> float:
    """The Telea loop in its own process on `cpus`, one thread per CPU: images/s."""
    cmd = pinned(cpus, "gcomp.benchmarks.e2e_sweep", ["--telea", str(data), "--telea-threads", str(len(cpus)),
                                                       "--mask", mask, "--size", str(size), "--out", str(out)])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the Telea loop failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return float(json.loads(r.stdout.strip().splitlines()[-1])["images_per_s"])


def sweep(data, model="small", backend="auto", cores=(1, 2), batch_sizes=(64, 256), io_threads=(2, 4),
          streams=(1,), mask="center", rounds=2, log=print, json_path: str | None = None) -> dict:
    """Every setting in every round (see the module's docstring). A job that fails is recorded in "errors" and the
    sweep goes on; with json_path the report so far is written after every job."""
    from ..engine.api import open_model

    data = Path(data)
    n_images = len(list_files(data, None))
    if not n_images:
        raise ValueError(f"no images under {data}")
    have = usable_cores()
    if max(cores) > have:
        raise ValueError(f"--cores asks for {max(cores)} CPUs, this process may use {have}")
    with open_model(model, backend=backend) as m:  # what the jobs will open: its size and backend, named
        size, backend_name, source = m.size, m.name, str(m.source)
    order = cpus_by_core()
    settings = [Setting(*v) for v in itertools.product(cores, batch_sizes, io_threads, streams)]
    work: list = [("telea", c) for c in cores] + settings
    report = {"gcomp_version": __version__, "commit": source_commit(),
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "data": str(data), "images": n_images, "model": source, "backend": backend_name, "mask": mask,
              "rounds": rounds, "cpus": {str(c): order[:c] for c in cores}, "jobs": [], "telea": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="gcomp-sweep-") as tmp_s:
        tmp = Path(tmp_s)
        for r in range(rounds):
            k = (r * len(work)) // max(rounds, 1)
            for w in work[k:] + work[:k]:  # each round starts elsewhere in the list: drift spreads over settings
                try:
                    if isinstance(w, tuple):
                        ips = run_telea(order[:w[1]], data, mask, size, tmp / "telea")
                        report["telea"].append({"round": r, "cores": w[1], "images_per_s": ips})
                        log(f"round {r}: Telea loop on {w[1]} core(s): {ips:.0f} images/s")
                    else:
                        res = run_job(w, order[:w.cores], data, tmp / "out", model, backend, mask)
                        report["jobs"].append({"round": r, **w.__dict__, **res})
                        log(f"round {r}: {w.cores} core(s), {w.label()}: {res['images_per_s']:.1f} images/s")
                except RuntimeError as e:
                    report["errors"].append({"round": r, "what": str(w), "error": str(e)})
                    log(f"round {r}: {w}: {e}")
                report["table"] = summarise(report)
                write_report(report, json_path, quiet=True)
    return report


def summarise(report: dict) -> list[dict]:
    """Per core count and setting: the median images/s over rounds and its ratio to that count's median Telea loop."""
    telea = {}
    for t in report["telea"]:
        telea.setdefault(t["cores"], []).append(t["images_per_s"])
    rows: dict[Setting, list[float]] = {}
    for j in report["jobs"]:
        rows.setdefault(Setting(j["cores"], j["batch_size"], j["io_threads"], j["streams"]), []).append(j["images_per_s"])
    out = []
    for s, v in sorted(rows.items(), key=lambda kv: (kv[0].cores, kv[0].batch_size, kv[0].io_threads, kv[0].streams)):
        if s.cores not in telea:
            continue  # its Telea loop has not run yet (a report written mid-sweep) or failed
        t = statistics.median(telea[s.cores])
        out.append({**s.__dict__, "default": s.is_default, "images_per_s": statistics.median(v), "min": min(v),
                    "max": max(v), "telea_images_per_s": t, "vs_telea": statistics.median(v) / t})
    return out


def table(report: dict) -> str:
    lines = [heading(report, "e2e sweep") + f", backend {report['backend']}, model {report['model']}, "
             f"{report['images']} images of {report['data']}, mask {report['mask']}, {report['rounds']} round(s); "
             "images/s: the median (min-max)", "",
             "| cores | setting | images/s | x Telea (same cores) | Telea loop |", "| --- | --- | --- | --- | --- |"]
    best = {}
    for row in report["table"]:
        if row["images_per_s"] > best.get(row["cores"], (0,))[0]:
            best[row["cores"]] = (row["images_per_s"], row)
    for row in report["table"]:
        s = Setting(row["cores"], row["batch_size"], row["io_threads"], row["streams"])
        mark = " (default)" if row["default"] else ""
        ips = f"{row['images_per_s']:.1f} ({row['min']:.0f}-{row['max']:.0f})"
        if best[row["cores"]][1] is row:
            ips = f"**{ips}**"
        lines.append(f"| {row['cores']} | `{s.label()}`{mark} | {ips} | {row['vs_telea']:.3f} | "
                     f"{row['telea_images_per_s']:.0f} |")
    for e in report.get("errors", []):
        lines.append(f"failed in round {e['round']}: {e['what']}: {e['error'].splitlines()[0][:300]}")
    return "\n".join(lines)


def _telea_main(a) -> None:
    from ..engine.masks import MaskSpec

    items = list_files(Path(a.telea), None)
    ips = telea_loop(items, MaskSpec.parse(a.mask), a.size, 0, Path(a.out), a.telea_threads)
    print(json.dumps({"images_per_s": ips}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", help="a folder of images (searched recursively)")
    ap.add_argument("--synthetic", type=int, default=None, metavar="N",
                    help="instead of DATA: N synthetic 64x64 JPEG faces in 20 folders, made in a temporary folder")
    ap.add_argument("--model", default="small", help="as gcomp complete's --model")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--mask", default="center")
    ap.add_argument("--cores", type=_ints, default=None, help="core counts (default: 1 and all this process may use)")
    ap.add_argument("--batch-size", type=_ints, default=[64, 256])
    ap.add_argument("--io-threads", type=_ints, default=[2, 4])
    ap.add_argument("--streams", type=_ints, default=[1])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default=None)
    # the Telea loop's own process (run_telea)
    ap.add_argument("--telea", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--telea-threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.telea:
        return _telea_main(a)
    if (a.data is None) == (a.synthetic is None):
        ap.error("give DATA (a folder of images) or --synthetic N (one of them)")
    if a.synthetic is not None and a.synthetic < 1:
        ap.error(f"--synthetic takes a number of images >= 1, got {a.synthetic}")
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("error: the sweep pins each job to N cores with sched_setaffinity, which this OS lacks (Linux has it)")
    cores = a.cores or sorted({1, usable_cores()})
    with tempfile.TemporaryDirectory(prefix="gcomp-faces-") as faces:
        data = a.data
        if a.synthetic is not None:
            from .synthetic import make_faces

            make_faces(Path(faces), a.synthetic, suffix=".jpg", folders=20)
            data = faces
        try:
            report = sweep(data, a.model, a.backend, cores, a.batch_size, a.io_threads, a.streams, a.mask, a.rounds,
                           json_path=a.json)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"error: {e}")
        if a.synthetic is not None:
            report["data"] = f"{a.synthetic} synthetic 64x64 JPEG faces (benchmarks/synthetic.py)"
    print(table(report))
    write_report(report, a.json)


if __name__ == "__main__":
    main()
