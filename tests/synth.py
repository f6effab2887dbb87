"""Synthetic test images (tests never use CelebA)."""
import cv2
import numpy as np


def make_faces(folder, n=6, size=32, seed=0, suffix=".png"):
    """Smooth synthetic 'faces': an ellipse and two eyes on a gradient; distinct per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[:] = np.linspace(40, 200, size, dtype=np.uint8)[:, None, None]
        c = tuple(int(v) for v in rng.integers(60, 250, 3))
        cv2.ellipse(img, (size // 2, size // 2), (size // 3, size // 2 - 2), 0, 0, 360, c, -1)
        for dx in (-size // 6, size // 6):
            cv2.circle(img, (size // 2 + dx, size * 2 // 5), max(size // 16, 1), (20, 20, 20), -1)
        p = folder / f"face_{i:02d}{suffix}"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def calibrate_batchnorm(torch, G, D, cfg, rounds: int = 4):
    """Running statistics from forward passes, as training would leave them: with DCGAN's init
    and the default (0, 1) statistics G's output is ~1e-4 and every gradient vanishes."""
    bns = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    G.train(), D.train()
    with torch.no_grad():
        for _ in range(rounds):
            x = G(torch.rand(64, cfg.zdim) * 2 - 1)
            D(torch.cat([x, torch.rand_like(x) * 2 - 1]))
    for m in bns:
        m.momentum = 0.1
    G.eval(), D.eval()


def search_inputs(n: int, size: int, zdim: int, seed: int = 0):
    """(z0, y, w) for comparing backends: random latents and targets, a centred square hole."""
    rng = np.random.default_rng(seed)
    z0 = rng.uniform(-1, 1, (n, zdim)).astype(np.float32)
    y = rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32)
    w = np.ones((n, 1, size, size), np.float32)
    w[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0
    return z0, y, w
