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
