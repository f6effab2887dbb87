"""The seed's DCGAN: one generator, one discriminator, one config.

Architecture as in bamos/dcgan-completion.tensorflow (the seed), generalised to 32, 64 or 128 px:
G: linear z -> 4x4x(C0), then transposed convs 5x5 stride 2 with BN + ReLU, tanh out.
D: convs 5x5 stride 2 with leaky ReLU 0.2 and BN on all but the first, linear -> one logit.
With size 64 and gf = df = 64: C0 = 8*gf, G ~ 5.1M and D ~ 4.3M parameters, as in the seed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = (32, 64, 128)
KERNEL, STRIDE, PAD = 5, 2, 2
LRELU_SLOPE = 0.2
BN_EPS = 1e-5


@dataclass(frozen=True)
class ModelConfig:
    size: int = 64
    zdim: int = 100
    gf: int = 64
    df: int = 64
    channels: int = 3

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"image size must be one of {SIZES}, got {self.size}")
        if min(self.zdim, self.gf, self.df, self.channels) < 1:
            raise ValueError(f"zdim, gf, df and channels must be positive: {self}")

    @property
    def n_layers(self) -> int:
        """Stride-2 layers between 4x4 and the image size."""
        return int(math.log2(self.size)) - 2

    def hash(self) -> str:
        """Short stable digest, stored in exported models to tie them to a training config."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _widths(base: int, n: int) -> list[int]:
    """Channel widths from the 4x4 end outwards: base*2^(n-1), ..., base."""
    return [base * 2 ** (n - 1 - i) for i in range(n)]


class Generator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        widths = _widths(cfg.gf, cfg.n_layers)
        self.fc = nn.Linear(cfg.zdim, widths[0] * 16, bias=False)
        self.bn0 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.deconvs = nn.ModuleList()
        self.bns = nn.ModuleList()
        outs = widths[1:] + [cfg.channels]
        for i, (cin, cout) in enumerate(zip(widths, outs)):
            last = i == len(outs) - 1
            self.deconvs.append(
                nn.ConvTranspose2d(cin, cout, KERNEL, STRIDE, PAD, output_padding=1, bias=last)
            )
            if not last:
                self.bns.append(nn.BatchNorm2d(cout, eps=BN_EPS))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, 4, 4)
        h = F.relu(self.bn0(h))
        for deconv, bn in zip(self.deconvs, self.bns):
            h = F.relu(bn(deconv(h)))
        return torch.tanh(self.deconvs[-1](h))


class Discriminator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        widths = _widths(cfg.df, cfg.n_layers)[::-1]  # df, 2df, ..., df*2^(n-1)
        ins = [cfg.channels] + widths[:-1]
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, KERNEL, STRIDE, PAD, bias=(i == 0))
            for i, (cin, cout) in enumerate(zip(ins, widths))
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(c, eps=BN_EPS) for c in widths[1:])
        self.fc = nn.Linear(widths[-1] * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the logit, shape [B]."""
        h = F.leaky_relu(self.convs[0](x), LRELU_SLOPE)
        for conv, bn in zip(self.convs[1:], self.bns):
            h = F.leaky_relu(bn(conv(h)), LRELU_SLOPE)
        return self.fc(h.flatten(1)).squeeze(1)


def weights_init(m: nn.Module) -> None:
    """DCGAN init (Radford et al.): N(0, 0.02) weights, BN gamma N(1, 0.02)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build(cfg: ModelConfig) -> tuple[Generator, Discriminator]:
    G, D = Generator(cfg), Discriminator(cfg)
    G.apply(weights_init)
    D.apply(weights_init)
    return G, D


def sample_z(n: int, zdim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ U[-1, 1], the seed's prior."""
    return torch.rand(n, zdim, generator=generator) * 2 - 1
