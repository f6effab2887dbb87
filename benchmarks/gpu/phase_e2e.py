"""Phase e2e of the GPU check: `python -m gcomp complete` on synthetic faces, images/s end to end (see check.py)."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

from common import ensure_checkpoint, run_logged, tail


def make_faces(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Smooth synthetic 'faces' (an ellipse, two eyes, a mouth on a gradient), distinct per image, as PNG."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, size, dtype=np.float32)[:, None, None] * np.ones((1, size, 3), np.float32)
    for i in range(n):
        img = (base * rng.uniform(0.6, 1.2, 3)).clip(0, 255).astype(np.uint8)
        c = tuple(int(v) for v in rng.integers(60, 250, 3))
        cx, cy = size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3))
        cv2.ellipse(img, (cx, cy), (size // 3, size // 2 - 2), 0, 0, 360, c, -1)
        for dx in (-size // 6, size // 6):
            cv2.circle(img, (cx + dx, cy - size // 10), max(size // 16, 1), (20, 20, 20), -1)
        cv2.ellipse(img, (cx, cy + size // 5), (size // 8, max(size // 24, 1)), 0, 0, 180, (40, 30, 120), -1)
        noise = rng.normal(0, 4, img.shape)
        cv2.imwrite(str(folder / f"face_{i:05d}.png"), (img + noise).clip(0, 255).astype(np.uint8))


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
