"""DCGAN training, faithful to the seed (bamos/dcgan-completion.tensorflow, after carpedm20/DCGAN-tensorflow).

Per step: z ~ U[-1, 1]; one discriminator update on BCE-with-logits (real -> 1, G(z) -> 0); then two
generator updates on BCE-with-logits (D(G(z)) -> 1) with the same z, as the seed does "to make sure
that d_loss does not go to zero". Adam(lr 2e-4, betas (0.5, 0.999)) for both.

Reproducible and resume-exact: the model init comes from `seed`, z for step s on rank r from a generator
seeded by (seed, s, r), and the batch of step s from (seed, epoch) alone (see data.StepBatchSampler), so
"3 steps, then --resume to 6" logs the same losses as "6 steps" (tested on CPU).

Multi-GPU / multi-process: launch with torchrun; WORLD_SIZE/RANK/LOCAL_RANK select DDP (nccl on CUDA,
gloo on CPU). --batch-size is per process. Only rank 0 writes files and shows progress.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from . import checkpoint as ckpt
from .data import DataError, ImageSource, StepBatchSampler
from .model import ModelConfig, build, sample_z

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
SNAPSHOTS = "snapshots"  # RUN/snapshots/step_NNNNNN.pt: weights-only copies, one per --save-every, to choose from
N_SAMPLES = 64  # the fixed-z sample grid is 8 x 8


class TrainError(ValueError):
    """A training request that cannot run as given (bad options, a --resume that does not match)."""


@dataclass
class TrainConfig:
    data: Sequence[str | os.PathLike] = ()
    out: str | os.PathLike = "run"
    size: int = 64
    zdim: int = 100
    gf: int = 64
    df: int = 64
    batch_size: int = 64  # per process
    steps: int | None = None  # total steps; exactly one of steps / epochs
    epochs: float | None = None  # passes over the data: steps = ceil(epochs * images / (batch_size * world_size))
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    sample_every: int = 200
    save_every: int = 500
    resume: bool = False
    workers: int = 2  # DataLoader worker processes per training process
    precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere
    amp: bool = True  # False forces fp32 (the older --no-amp)
    snapshots: bool = True  # keep RUN/snapshots/step_NNNNNN.pt at every save
    progress: bool = True  # rich progress bar on a TTY; plain lines otherwise

    def validate(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [self.data]
        if not self.data:
            raise TrainError("no data paths given")
        if (self.steps is None) == (self.epochs is None):
            raise TrainError("give exactly one of --steps or --epochs")
        if self.steps is not None and self.steps < 1:
            raise TrainError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise TrainError(f"--epochs must be a positive number, got {self.epochs}")
        for name in ("batch_size", "sample_every", "save_every"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise TrainError(f"--workers must be >= 0, got {self.workers}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 <= self.beta1 < 1:
            raise TrainError(f"need lr > 0 and 0 <= beta1 < 1, got lr={self.lr} beta1={self.beta1}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise TrainError(f"--out {self.out} is a file; it must be a run folder")
        above = Path(self.out).absolute()
        while not above.exists() and above.parent != above:
            above = above.parent
        if not above.is_dir():  # afile/run: refused now, not after the data is read
            raise TrainError(f"--out {self.out}: {above} is a file, so the run folder cannot be made there")
        if self.precision not in PRECISIONS:
            raise TrainError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise TrainError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        try:
            self.model_config()
        except ValueError as e:
            raise TrainError(str(e)) from None

    def model_config(self) -> ModelConfig:
        return ModelConfig(size=self.size, zdim=self.zdim, gf=self.gf, df=self.df)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        d = asdict(self)
        d["data"] = [str(p) for p in self.data]
        d["out"] = str(self.out)
        return d


# --- distributed ------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we called init_process_group, so we destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda, but CUDA is not available (torch "
                             f"{torch.__version__}); use --device cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _init_dist(device_name: str) -> tuple[_Dist, torch.device]:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    info = _Dist(rank, world, local_rank)
    if world > 1 or (dist.is_available() and dist.is_initialized()):
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            info.owns_group = True
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    return info, device


# --- helpers ----------------------------------------------------------------------------------
def resolve_precision(requested: str, device: torch.device, amp: bool = True) -> str:
    """'bf16' or 'fp32' for training on `device`: the one place this is decided (train and train-encoder).

    auto: bf16 autocast on CUDA, and on CPUs with native bf16 (AVX512_BF16 / AMX, gcomp.engine.cpu), where
    bf16 autocast with channels_last runs a gf = df = 64 step 2.5x faster than fp32 (benchmarks/results/
    train-precision-amx-2c.md); fp32 on other CPUs, where bf16 is emulated and slower. amp=False (--no-amp) is
    fp32. `requested` was checked by the config's validate()."""
    if requested != "auto":
        return requested
    if not amp:
        return "fp32"
    if device.type == "cuda":
        return "bf16"
    from ..engine.cpu import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast_for(device: torch.device, precision: str):
    """A context-manager factory: bf16 autocast on `device`, or nothing for fp32. Losses are taken in fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def memory_format_for(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last where it pays: with bf16 on CPU, oneDNN's bf16 convolutions run NHWC without reorders (an
    earlier session measured 0.89 s a step with it, 3.48 s without, gf = df = 64 on a 2-core AMX Xeon); elsewhere
    contiguous, as measured no slower."""
    return torch.channels_last if (precision == "bf16" and device.type == "cpu") else torch.contiguous_format


def precision_label(precision: str, mem: torch.memory_format) -> str:
    """How training says what it runs: 'bf16 channels_last', 'fp32', ..."""
    return precision + (" channels_last" if mem == torch.channels_last else "")


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator for (seed, step, rank): z is the same whatever ran before, so resume is exact."""
    s = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0]) & (2**63 - 1)
    return torch.Generator().manual_seed(s)


def fixed_z(seed: int, zdim: int, n: int = N_SAMPLES) -> torch.Tensor:
    return sample_z(n, zdim, torch.Generator().manual_seed(int(seed)))


def save_grid(images: torch.Tensor, path: str | os.PathLike, pad: int = 2) -> Path:
    """[N, 3, H, W] in [-1, 1] -> one PNG grid (ceil(sqrt(N)) columns)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1).numpy()
    n, h, w, c = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = x[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def _truncate_log(log: Path, step: int) -> None:
    """Drop lines past the checkpoint's step (a run killed between two checkpoints logged them)."""
    if not log.exists():
        return
    keep = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    log.write_text("".join(line + "\n" for line in keep))


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_resume(state: dict, cfg: TrainConfig, mcfg: ModelConfig, world: int, path: Path, main: bool) -> None:
    stored = state.get("model_config", {})
    if stored != asdict(mcfg):
        diff = ", ".join(f"{k}: checkpoint {stored.get(k)} vs requested {v}"
                         for k, v in asdict(mcfg).items() if stored.get(k) != v)
        raise TrainError(f"--resume: {path} holds a different model ({diff}); "
                         "pass the same --size/--zdim/--gf/--df or a new --out")
    for key in ("opt_G", "opt_D", "step"):
        if key not in state:
            raise TrainError(f"--resume: {path} has no '{key}' (a weights-only checkpoint cannot be resumed)")
    old = state.get("train_config") or {}
    changed = [k for k in ("seed", "batch_size", "lr", "beta1", "data") if k in old and old[k] != cfg.to_dict()[k]]
    if state.get("world_size", world) != world:
        changed.append("world_size")
    if changed and main:
        _say(f"warning: --resume with changed {', '.join(changed)}: the run continues, "
             "but will not match an uninterrupted one")


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    logits = logits.float()  # in fp32 under autocast too
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def train_step(G, D, D_plain, opt_G, opt_D, real: torch.Tensor, z: torch.Tensor, autocast):
    """The seed's step: one D update, then two G updates with the same z. G and D may be DDP-wrapped; D_plain
    is D unwrapped. Returns (d_loss, g_loss, real_logit, fake_logit). benchmarks/train_speed.py times this."""
    # D: real -> 1, fake -> 0 (separate forward passes, so BN sees real and fake batches apart, as in the seed)
    with autocast():
        with torch.no_grad():
            fake = G(z)
        real_logit, fake_logit = D(real), D(fake)
        d_loss = bce(real_logit, 1.0) + bce(fake_logit, 0.0)
    opt_D.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_D.step()

    # G twice with the same z: D(G(z)) -> 1. D is called unwrapped and frozen, so only G's grads
    # are computed (and, under DDP, all-reduced).
    D_plain.requires_grad_(False)
    for _ in range(2):
        with autocast():
            g_loss = bce(D_plain(G(z)), 1.0)
        opt_G.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_G.step()
    D_plain.requires_grad_(True)
    return d_loss, g_loss, real_logit, fake_logit


# --- the loop ---------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a DCGAN; returns the path of the final checkpoint (RUN/checkpoint.pt)."""
    cfg.validate()
    dist_info, device = _init_dist(cfg.device)
    try:
        return _train(cfg, dist_info, device)
    finally:
        if dist_info.owns_group:
            import torch.distributed as dist
            dist.destroy_process_group()


def _train(cfg: TrainConfig, di: _Dist, device: torch.device) -> Path:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader

    out = Path(cfg.out)
    ckpt_path = out / ckpt.CKPT_NAME
    mcfg = cfg.model_config()
    data = ImageSource(cfg.data, cfg.size)
    world, B = di.world_size, cfg.batch_size
    total = cfg.steps if cfg.steps is not None else math.ceil(cfg.epochs * len(data) / (B * world))

    state = None
    if cfg.resume:
        try:
            state = ckpt.load_state(ckpt_path)
        except ckpt.CheckpointError as e:
            raise TrainError(f"--resume: {e}") from None
        _check_resume(state, cfg, mcfg, world, ckpt_path, di.main)
    elif ckpt_path.exists():
        raise TrainError(f"{out} already holds a run ({ckpt_path}); pass --resume to continue it, "
                         "or choose another --out")

    torch.manual_seed(cfg.seed)
    G, D = build(mcfg)
    precision = resolve_precision(cfg.precision, device, cfg.amp)
    autocast = autocast_for(device, precision)
    mem = memory_format_for(device, precision)
    G.to(device, memory_format=mem)
    D.to(device, memory_format=mem)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    start = 0
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        start = int(state["step"])
        del state
    if start >= total:
        if di.main:
            _say(f"{ckpt_path} is already at step {start} >= {total}: nothing to do")
        return ckpt_path

    batches = StepBatchSampler(len(data), B, cfg.seed, di.rank, world, start=start, stop=total)
    loader = DataLoader(data, batch_sampler=batches, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator())

    # BatchNorm: plain per-replica BN (each process normalises with its own batch statistics), as a
    # single-GPU run with --batch-size per process would; SyncBatchNorm is not needed for DCGAN.
    G_plain, D_plain = G, D
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    z_fixed = fixed_z(cfg.seed, cfg.zdim).to(device)

    log_path = out / "log.jsonl"
    if di.main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrainError(f"--out {out}: cannot create the run folder ({e.strerror or e})") from None
        (out / "config.json").write_text(json.dumps({
            "gcomp_version": __version__, "model_config": asdict(mcfg), "train_config": cfg.to_dict(),
            "world_size": world, "images": len(data), "steps_per_epoch": batches.steps_per_epoch,
            "total_steps": total, "device": str(device), "precision": precision,
            "memory_format": str(mem).replace("torch.", ""),
        }, indent=2) + "\n")
        if start:
            _truncate_log(log_path, start)
        elif log_path.exists():
            log_path.unlink()

    saved = [start] if start else []  # the steps saved to ckpt_path (a resumed run's start is one)

    def diverged(step: int, what: str) -> TrainError:
        kept = f"{ckpt_path} holds step {saved[-1]}, the last save before it" if saved else "nothing was saved"
        return TrainError(f"training diverged at step {step}: {what} (a lower --lr may help); {kept}")

    def check_weights(step: int) -> None:
        """Before a save, on every rank (each holds the same weights; one rank raising alone would leave the others
        waiting in the next collective): the losses were finite, but this step's update, or BatchNorm's running
        statistics, may not be; NaN weights are never saved over good ones."""
        tensors = [t for net in (G_plain, D_plain) for t in net.state_dict().values() if t.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise diverged(step, "the weights hold NaN or infinite values")

    def save(step: int) -> None:
        saved.append(step)
        ckpt.save(ckpt_path, mcfg, G_plain, D_plain, train_config=cfg.to_dict(), opt_G=opt_G.state_dict(),
                  opt_D=opt_D.state_dict(), step=step, world_size=world)
        if cfg.snapshots:  # weights only (no optimizer state): what `gcomp export` and `gcomp eval` choose among
            ckpt.save(out / SNAPSHOTS / f"step_{step:06d}.pt", mcfg, G_plain, D_plain,
                      train_config=cfg.to_dict(), step=step)

    def sample(step: int) -> None:
        G_plain.eval()  # running BN statistics: each sample independent of the others
        with torch.no_grad():
            imgs = G_plain(z_fixed)
        G_plain.train()
        save_grid(imgs, out / "samples" / f"step_{step:06d}.png")

    bar = None
    show_bar = cfg.progress and di.main and sys.stderr.isatty()
    plain = cfg.progress and di.main and not show_bar
    if di.main and cfg.progress:
        _say(f"training {mcfg.size}px DCGAN (gf {mcfg.gf}, df {mcfg.df}, z {mcfg.zdim}) on {data.describe()}: "
             f"steps {start + 1}..{total}, batch {B} x {world} process(es), {batches.steps_per_epoch} steps/epoch, "
             f"device {device} {precision_label(precision, mem)} -> {out}")
    if show_bar:
        from rich.progress import TextColumn

        from ..engine.progress import ProgressBar

        bar = ProgressBar(True, total, "step",
                          TextColumn("d_loss {task.fields[d]:.4f}  g_loss {task.fields[g]:.4f}  {task.fields[ips]:.1f} img/s"),
                          completed=start, d=float("nan"), g=float("nan"), ips=0.0)

    log = open(log_path, "a") if di.main else None
    step = start
    ips_avg = None
    try:
        G.train()
        D.train()
        t_last = time.perf_counter()
        for s, real in zip(range(start, total), loader):
            real = real.to(device, non_blocking=True).contiguous(memory_format=mem)
            z = sample_z(B, cfg.zdim, _step_generator(cfg.seed, s, di.rank)).to(device, non_blocking=True)

            d_loss, g_loss, real_logit, fake_logit = train_step(G, D, D_plain, opt_G, opt_D, real, z, autocast)

            stats = torch.stack([d_loss.detach().float(), g_loss.detach().float(),
                                 torch.sigmoid(real_logit.detach().float()).mean(),
                                 torch.sigmoid(fake_logit.detach().float()).mean()])
            if world > 1:
                import torch.distributed as dist
                dist.all_reduce(stats)
                stats /= world
            d_l, g_l, d_real, d_fake = stats.tolist()
            if not (math.isfinite(d_l) and math.isfinite(g_l)):  # every rank sees the same (reduced) losses
                raise diverged(s + 1, f"d_loss {d_l}, g_loss {g_l}")
            step = s + 1
            if step % cfg.save_every == 0 or step == total:
                check_weights(step)
            now = time.perf_counter()
            ips = B * world / max(now - t_last, 1e-9)
            t_last = now
            ips_avg = ips if ips_avg is None else 0.9 * ips_avg + 0.1 * ips

            if di.main:
                log.write(json.dumps({"step": step, "d_loss": d_l, "g_loss": g_l, "d_real": d_real,
                                      "d_fake": d_fake, "images_per_s": round(ips, 2)}) + "\n")
                log.flush()
                if step % cfg.sample_every == 0 or step == total:
                    sample(step)
                if step % cfg.save_every == 0 or step == total:
                    save(step)
                if bar is not None:
                    bar.update(completed=step, d=d_l, g=g_l, ips=ips_avg)
                elif plain and (step % cfg.sample_every == 0 or step == total):
                    _say(f"step {step}/{total}  d_loss {d_l:.4f}  g_loss {g_l:.4f}  "
                         f"d_real {d_real:.3f}  d_fake {d_fake:.3f}  {ips_avg:.1f} img/s")
        if step < total:
            raise DataError(f"the data ran out at step {step} of {total}")  # cannot happen with StepBatchSampler
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        data.close()
    if di.main and cfg.progress:
        _say(f"saved {ckpt_path} (step {step})")
    return ckpt_path
