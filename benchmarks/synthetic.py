"""Synthetic face-like images for benchmarks that run where no dataset is (a lent GPU machine, a new laptop):
smooth, distinct per image, with the sensor-like noise that gives JPEG and PNG their usual work per pixel.
Depends on numpy and OpenCV only (benchmarks/gpu/phase_e2e.py imports it too)."""
from __future__ import annotations

from pathlib import Path


def make_faces(folder: Path, n: int, size: int = 64, seed: int = 0, suffix: str = ".png", folders: int = 1) -> None:
    """n 'faces' (an ellipse, two eyes, a mouth on a gradient) as face_NNNNN{suffix}, spread over `folders`
    subfolders dNN (image i in d{i % folders}) when folders > 1, else directly in `folder`."""
    import cv2
    import numpy as np

    folder = Path(folder)
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
        sub = folder / f"d{i % folders:02d}" if folders > 1 else folder
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"face_{i:05d}{suffix}"), (img + noise).clip(0, 255).astype(np.uint8))
