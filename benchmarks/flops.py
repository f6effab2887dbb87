"""The FLOP count of one search iteration, the unit of every roofline and FLOP/s figure (bench and the GPU check)."""
from __future__ import annotations

import math


def flops_per_iteration(size: int, zdim: int, gf: int, df: int, channels: int = 3) -> float:
    """FLOPs of one search iteration for one image: G and D forward, then the input-gradient
    backward through both (the same multiply-adds again); weight gradients are not needed."""
    n = int(math.log2(size)) - 2
    gw = [gf * 2 ** (n - 1 - i) for i in range(n)] + [channels]
    macs = zdim * 16 * gw[0]
    res = 4
    for cin, cout in zip(gw[:-1], gw[1:]):
        macs += cin * cout * 25 * res * res  # transposed conv: every input pixel scatters a 5x5 kernel
        res *= 2
    dw = [channels] + [df * 2**i for i in range(n)]
    for cin, cout in zip(dw[:-1], dw[1:]):
        res //= 2
        macs += cin * cout * 25 * res * res
    macs += dw[-1] * 16
    return 2 * 2 * macs  # 2 FLOPs per MAC, forward + input-backward
