"""An encoder E(masked image, mask) -> z that starts the latent search near its answer.

The search from a random z spends most of its iterations finding the right region of the prior;
E, trained against the frozen generator, predicts that region in one forward pass (Lahiri et
al., "Prior guided GAN based semantic inpainting", report 4.5-15x fewer iterations this way).

Loss, per batch (all terms are means):
- known-pixel reconstruction, |M * (G(E(x, M)) - x)|: exactly the search's contextual loss, so
  E starts where the search's own objective is already low;
- whole-image reconstruction, 0.5 * |G(E(x, M)) - x|: on training faces the hole is known, so E
  learns to put a plausible face behind it instead of any latent that only fits the context;
- latent term, ||E(G(z*), M) - z*||^2 on G's own samples, where the true latent z* is known: it
  keeps E's outputs in the part of the prior G was trained on (tanh keeps them inside [-1, 1]),
  so the search starts on the manifold rather than at an off-prior latent that fits the pixels.
Masks are drawn from every kind gcomp supports, at random per image.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.masks import KINDS, make_mask
from .checkpoint import load_models, weights_id
from .loop import (DEVICES, PRECISIONS, TrainError, autocast_for, memory_format_for, precision_label, resolve_device,
                   resolve_precision)
from .model import BN_EPS, KERNEL, LRELU_SLOPE, PAD, STRIDE, ModelConfig, _widths, sample_z, weights_init

# strokes came after the bundled encoders were trained: left out so that `gcomp train-encoder` still reproduces
# them, and so that their score on strokes measures masks the encoder never saw (README, Masks)
TRAIN_KINDS = tuple(k for k in KINDS if k not in ("full", "strokes"))


class Encoder(nn.Module):
    """D's architecture on 4 channels (masked RGB + mask), ending in zdim tanh units."""

    def __init__(self, cfg: ModelConfig, width: int | None = None):
        super().__init__()
        self.cfg = cfg
        widths = _widths(width or cfg.df, cfg.n_layers)[::-1]
        ins = [cfg.channels + 1] + widths[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, KERNEL, STRIDE, PAD, bias=(n == 0))
                                   for n, (i, o) in enumerate(zip(ins, widths)))
        self.bns = nn.ModuleList(nn.BatchNorm2d(c, eps=BN_EPS) for c in widths[1:])
        self.fc = nn.Linear(widths[-1] * 16, cfg.zdim)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image: the target in [-1, 1] (hole pixels are ignored); mask: [B, 1, H, W], 1 = known."""
        h = torch.cat([image * mask, mask], 1)
        h = F.leaky_relu(self.convs[0](h), LRELU_SLOPE)
        for conv, bn in zip(self.convs[1:], self.bns):
            h = F.leaky_relu(bn(conv(h)), LRELU_SLOPE)
        return torch.tanh(self.fc(h.flatten(1)))


def random_masks(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    kinds = rng.choice(TRAIN_KINDS, n)
    params = {"center": lambda: rng.uniform(0.15, 0.35), "random": lambda: rng.uniform(0.3, 0.9),
              "pattern": lambda: rng.uniform(0.1, 0.5)}
    ms = [make_mask(k, size, params[k]() if k in params else None, rng) for k in kinds]
    return torch.from_numpy(np.stack(ms)[:, None])


@dataclass
class EncoderConfig:
    model: str = ""  # the generator's checkpoint
    data: tuple = ()
    out: str = "encoder"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    w_full: float = 0.5
    w_latent: float = 1.0
    device: str = "auto"  # auto: CUDA when there is one (on a CPU, an encoder step of a gf = 64 G takes ~1 s)
    precision: str = "auto"  # training compute, as gcomp train decides it (bf16 autocast where native); not storage

    def validate(self) -> None:
        """Refuse bad options before the checkpoint loads or a file is written (gcomp train's messages)."""
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:  # also refuses nan
            raise TrainError(f"--lr must be positive and finite, got {self.lr}")
        if not 0 <= self.seed < 2 ** 64:  # what torch.manual_seed and numpy's generators accept
            raise TrainError(f"--seed must be in [0, 2^64), got {self.seed}")
        if self.device not in DEVICES:
            raise TrainError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise TrainError(f"--train-precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def export_folder(out: str | os.PathLike, wid: str) -> Path:
    """The export folder that encoder.onnx goes into (`out`, or the folder of its step/generator file), refusing
    one without graphs or with graphs of another checkpoint: the runtime would refuse the encoder beside them, and
    the encoder already there (trained for those graphs) would be lost. Read as the runtime reads it."""
    from ..engine.backends import BackendError
    from ..engine.backends.exported import WEIGHTS_KEY, check_model_path, export_info, model_files, onnx_metadata

    folder = Path(out)
    if not folder.exists():  # (model_files would look in the folder above it)
        raise TrainError(f"--out {folder} does not exist: give the checkpoint's export folder "
                         f"(`gcomp export CHECKPOINT --out {folder}` first)")
    try:
        folder = check_model_path(folder)
        gen, step = model_files(folder)
        info, _, _ = export_info(gen, onnx_metadata(gen), step, onnx_metadata(step))
    except BackendError as e:
        raise TrainError(str(e)) from None
    theirs = info.meta.get(WEIGHTS_KEY)
    if theirs != wid:
        raise TrainError(f"{folder}: its graphs come from another checkpoint (weights id {theirs}; this checkpoint's "
                         f"is {wid}); pass that export's checkpoint, or `gcomp export` this one to another --out first")
    return folder


def train_encoder(cfg: EncoderConfig, log=print) -> Path:
    """Train E against the frozen G of cfg.model; writes OUT/encoder.pt and OUT/encoder_log.jsonl, OUT being the
    export folder of that checkpoint (checked, with the options, before anything is written)."""
    from torch.utils.data import DataLoader

    from .data import ImageSource, StepBatchSampler

    cfg.validate()
    dev = resolve_device(cfg.device, 0)
    torch.manual_seed(cfg.seed)
    mcfg, G, D = load_models(cfg.model)
    wid = weights_id(G, D)  # the generator checkpoint this encoder is for: stamped on encoder.onnx
    out = export_folder(cfg.out, wid)
    for p in G.parameters():
        p.requires_grad_(False)
    precision = resolve_precision(cfg.precision, dev)
    autocast, mem = autocast_for(dev, precision), memory_format_for(dev, precision)
    G.to(dev, memory_format=mem)
    E = Encoder(mcfg)
    E.apply(weights_init)
    E.to(dev, memory_format=mem)
    log(f"training the encoder on {dev} {precision_label(precision, mem)}")
    opt = torch.optim.Adam(E.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    data = ImageSource(list(cfg.data), mcfg.size)
    loader = DataLoader(data, batch_sampler=StepBatchSampler(len(data), cfg.batch_size, cfg.seed, stop=cfg.steps),
                        num_workers=1)
    rng = np.random.default_rng(cfg.seed)
    logf = open(out / "encoder_log.jsonl", "w")
    t0 = time.perf_counter()
    for step, x in enumerate(loader, 1):
        x = x.to(dev, non_blocking=True).contiguous(memory_format=mem)
        m = random_masks(len(x), mcfg.size, rng).to(dev).contiguous(memory_format=mem)
        zs = sample_z(len(x), mcfg.zdim).to(dev)
        m2 = random_masks(len(x), mcfg.size, rng).to(dev).contiguous(memory_format=mem)
        with autocast():  # the losses themselves in fp32
            xh = G(E(x, m)).float()
            with torch.no_grad():
                xs = G(zs)
            ez = E(xs, m2).float()
        known = (m * (xh - x)).abs().mean()
        full = (xh - x).abs().mean()
        latent = (ez - zs).pow(2).mean()
        loss = known + cfg.w_full * full + cfg.w_latent * latent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        rec = {"step": step, "loss": loss.item(), "known": known.item(), "full": full.item(),
               "latent": latent.item(), "seconds": time.perf_counter() - t0}
        logf.write(json.dumps(rec) + "\n")
        if step % 50 == 0 or step == cfg.steps:
            log(f"encoder step {step}/{cfg.steps}: known {rec['known']:.4f} full {rec['full']:.4f} "
                f"latent {rec['latent']:.4f} ({rec['seconds']:.0f} s)")
            torch.save({"config": asdict(cfg) | {"data": [str(d) for d in cfg.data]}, "model_config": asdict(mcfg),
                        "config_hash": mcfg.hash(), "weights_id": wid, "precision": precision,
                        "E": {k: v.cpu().contiguous() for k, v in E.state_dict().items()}, "step": step}, out / "encoder.pt.tmp")
            os.replace(out / "encoder.pt.tmp", out / "encoder.pt")
        if step >= cfg.steps:
            break
    logf.close()
    return out / "encoder.pt"
