"""Phase e2e of the GPU check: `python -m gcomp complete` on synthetic faces, images/s end to end (see check.py)."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from common import ensure_checkpoint, run_logged, tail

from gcomp.benchmarks.synthetic import make_faces


def phase_e2e(cfg: dict) -> dict:
    work, out = Path(cfg["work"]), Path(cfg["out"])
    ckpt = ensure_checkpoint(cfg)
    src = work / "e2e-in"
    t0 = time.perf_counter()
    make_faces(src, cfg["e2e_images"], cfg["model"]["size"])
    res: dict = {"images": cfg["e2e_images"], "image_size": cfg["model"]["size"], "format": "png",
                 "generate_s": round(time.perf_counter() - t0, 2), "runs": []}
    logs = []
    import importlib.util

    blend = []
    if importlib.util.find_spec("scipy") is None:  # the default blend's sparse solve needs scipy
        blend = ["--blend", "none"]
        res["note"] = "scipy is not installed on this machine: e2e ran with --blend none"
    # decode/encode threads too: on the H200 batch 1024 ran slower end to end than 64 (178 vs 260 images/s)
    # with the default 4 threads on a 16-core host, while its search alone is ~10x faster than that
    for batch, threads in [(b, t) for b in cfg["e2e_batches"] for t in cfg["e2e_io_threads"]]:
        dst = work / f"e2e-out-b{batch}-t{threads}"
        cmd = [sys.executable, "-m", "gcomp", "complete", str(src), str(dst), "--model", str(ckpt),
               "--device", cfg["device"], "--backend", "torch", "--precision", cfg["e2e_precision"],
               "--iters", str(cfg["e2e_iters"]), "--batch-size", str(batch), "--io-threads", str(threads),
               "--no-progress", *blend, *shlex.split(cfg.get("e2e_extra") or "")]
        run = {"batch": batch, "io_threads": threads, "command": " ".join(["gcomp"] + cmd[3:]).replace(str(work), "$WORK"),
               "iters": cfg["e2e_iters"], "precision": cfg["e2e_precision"]}
        left = cfg["phase_deadline"] - time.time()
        if left < 10:
            run.update(status="skipped", reason="the e2e phase's time box was reached")
            res["runs"].append(run)
            continue
        r = run_logged(cmd, left, dict(os.environ), cwd=work)
        logs.append(f"$ {run['command']}\n(exit {r['exit_code']}, {r['seconds']:.1f} s)\n{tail(r['output'], 60)}\n")
        run.update(exit_code=r["exit_code"], timed_out=r["timed_out"], wall_s=round(r["seconds"], 2))
        summary = dst / "gcomp-summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            run.update(done=s.get("done"), failed=s.get("n_failed", len(s.get("failed", []))),
                       seconds=s.get("seconds"), search_seconds=s.get("search_seconds"),
                       images_per_s=s.get("images_per_s"),
                       images_per_s_wall=(s.get("done") or 0) / r["seconds"] if r["seconds"] else None,
                       backend_settings=(s.get("settings") or {}).get("backend_settings"))
            written = sum(1 for p in dst.rglob("*.png"))
            run["written"] = written
            run["status"] = ("ok" if r["exit_code"] == 0 and s.get("done") == cfg["e2e_images"]
                             and written == cfg["e2e_images"] else "failed")
        else:
            run["status"] = "failed"
            run["error"] = tail(r["output"], 8)
        res["runs"].append(run)
        print(f"e2e batch {batch}, {threads} I/O threads: {run['status']}, {run.get('images_per_s') or 0:.1f} images/s",
              flush=True)
    (out / "e2e.log").write_text("\n".join(logs))
    res["log"] = "e2e.log"
    return {"e2e": res}
