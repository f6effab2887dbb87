"""What the phases of the GPU check share: the constants, small helpers, the run's configuration (from the
command line's options), and the model and inputs every timed phase uses (see check.py)."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root, which is the `gcomp` package
SCHEMA = "gcomp-gpu-check/1"
PHASES = ("machine", "bench", "profile", "e2e", "pytest")  # pytest last: it takes what time is left
# Time boxes (s) per phase on a GPU; the run also stops starting work at --budget-s.
BOXES = {"machine": 60, "bench": 300, "profile": 90, "e2e": 150, "pytest": 240}  # the H200 run took 134 s in all
DRY_BOXES = {"machine": 60, "bench": 120, "profile": 60, "e2e": 120, "pytest": 120}
LOG_TAIL = 400  # lines of a subprocess's output kept in the logs


# -- helpers ------------------------------------------------------------------------------------------------
def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in str(s).split(",") if x.strip()]


def semis(s: str) -> list[str]:
    """Kernel choices, ';' between them (a choice may itself be a comma list: nhwc,masks)."""
    return [k.strip() for k in s.split(";") if k.strip()]


def csv_strs(s: str) -> list[str]:
    return [x.strip() for x in str(s).split(",") if x.strip()]


def tail(text: str, n: int = LOG_TAIL) -> str:
    lines = text.splitlines()
    return "\n".join(([f"[... {len(lines) - n} lines cut ...]"] if len(lines) > n else []) + lines[-n:])


def write_json(path: Path, obj) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def import_path_env() -> dict:
    """Environment in which `import gcomp` is this tree: the repository root is the package, so a folder
    holding a symlink named gcomp -> ROOT on PYTHONPATH is enough (no pip, no network)."""
    env = dict(os.environ)
    link_dir = Path(tempfile.gettempdir()) / f"gcomp-path-{os.getuid()}"
    link = link_dir / "gcomp"
    link_dir.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == ROOT):
        tmp = link_dir / f".gcomp-{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(ROOT, target_is_directory=True)
        os.replace(tmp, link)
    parts = [str(link_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def run_logged(cmd: list[str], timeout: float, env: dict, cwd: Path | None = None) -> dict:
    """Run cmd in its own process group; on timeout the whole group is killed. Output captured."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         errors="replace", start_new_session=True)
    try:
        out, _ = p.communicate(timeout=max(1.0, timeout))
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = p.communicate()
        timed_out = True
    return {"cmd": cmd, "exit_code": p.returncode, "timed_out": timed_out, "seconds": time.perf_counter() - t0,
            "output": out or ""}


# -- configuration ------------------------------------------------------------------------------------------
def build_config(a: argparse.Namespace) -> dict:
    dry = a.dry
    pick = lambda given, real, tiny: given if given is not None else (tiny if dry else real)  # noqa: E731
    cfg = {
        "dry": dry,
        "device": pick(a.device, "cuda", "cpu"),
        "model": ({"size": 32, "zdim": 16, "gf": 8, "df": 8} if dry else {"size": 64, "zdim": 100, "gf": 64, "df": 64}),
        "batches": csv_ints(pick(a.batches, "64,256,1024,2048", "2,4")),
        "precisions": csv_strs(pick(a.precisions, "bf16,tf32,fp32", "bf16,tf32,fp32")),
        "graphs": csv_strs(pick(a.graphs, "on,off", "on,off")),
        # bf16 CUDA-graph rows at every batch, per kernel choice (engine/backends/torch_backend.py KERNELS)
        "kernels": semis(pick(a.kernels, "portable;tuned", "portable;tuned")),
        # one lever at a time at the largest batch (';' between choices); compile last: it takes a minute
        # levers build up: channels-last, then + fused masks, then + padding and torch.compile (the dry run
        # times a comma-named choice too, but not compile: that is tests/test_fast_paths.py's, ~30 s on CPU)
        "levers": semis(pick(a.levers, "nhwc;nhwc,masks;nhwc,pad8,masks,compile", "nhwc;nhwc,masks;pad8")),
        "profile_kernels": semis(pick(a.profile_kernels, "portable;tuned", "portable;tuned")),
        "warmup": pick(a.warmup, 3, 1),
        "iters_short": pick(a.iters_short, 10, 2),
        "iters_long": pick(a.iters_long, 60, 6),
        "seed_batch": pick(a.seed_batch, 64, 4),
        "seed_iters": pick(a.seed_iters, 50, 3),
        "full_iters": a.full_iters,
        "default_iters": a.default_iters,
        "matmul_n": pick(a.matmul_n, 8192, 256),
        "profile_steps": pick(a.profile_steps, 5, 2),
        "profile_batch": a.profile_batch,
        "e2e_images": pick(a.e2e_images, 3000, 20),
        "e2e_batches": csv_ints(pick(a.e2e_batches, "64,1024", "8")),
        "e2e_io_threads": csv_ints(pick(a.e2e_io_threads, "4,16", "4")),
        "e2e_iters": pick(a.e2e_iters, a.default_iters, 3),
        "e2e_precision": a.e2e_precision,
        "e2e_extra": a.e2e_extra,
        "ort": csv_strs(a.ort_precisions),
        "ort_graph_batches": csv_ints(pick(a.ort_graph_batches, "2048", "")),
        "phases": [p for p in PHASES if p not in set(csv_strs(a.skip))],
        "budget_s": pick(a.budget_s, 480, 300),
        "boxes": dict(DRY_BOXES if dry else BOXES),
        "pytest_args": a.pytest_args,
    }
    return cfg


# -- the model and inputs -----------------------------------------------------------------------------------
def ensure_checkpoint(cfg: dict) -> Path:
    """The random-weight model every phase uses (BatchNorm statistics from a few forward passes, as a
    trained model would have them: with the init's (0, 1) statistics the outputs are ~1e-4)."""
    path = Path(cfg["work"]) / "model" / "checkpoint.pt"
    if path.exists():
        return path
    import torch

    from gcomp.train import checkpoint
    from gcomp.train.model import ModelConfig, build

    torch.manual_seed(0)
    mc = ModelConfig(**cfg["model"])
    G, D = build(mc)
    bns = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    G.train(), D.train()
    with torch.no_grad():
        for _ in range(3):
            x = G(torch.rand(64, mc.zdim) * 2 - 1)
            D(torch.cat([x, torch.rand_like(x) * 2 - 1]))
    for m in bns:
        m.momentum = 0.1
    G.eval(), D.eval()
    return checkpoint.save(path, mc, G, D, step=0)


def search_inputs(batch: int, size: int, zdim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    z = rng.uniform(-1, 1, (batch, zdim)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
    w = np.ones((batch, 1, size, size), np.float32)
    w[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0  # the center mask
    return z, y, w


def import_reference():
    """The autograd oracle (the seed's loss and gradient): gcomp.train.reference, formerly gcomp.engine.reference."""
    import importlib

    errors = []
    for name in ("gcomp.train.reference", "gcomp.engine.reference"):
        try:
            return importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name}: {e}")
    raise ImportError("the reference loop does not import: " + "; ".join(errors))


def _sync(torch, dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
