"""Why does an encoder start the search well for one generator and badly for another? Measured per model.

    python -m gcomp.benchmarks.encoder_probe MODEL [MODEL ...] --val ../shared/data/celeba64/val.tar --limit 64

For each exported model (a folder with generator.onnx, step.onnx, encoder.onnx), on the first --limit val
faces, whole-image PSNR of G's own output (no blend, no composite: what the latent alone is worth):
- ceiling: G fitted to the whole face (every pixel known, lam 0, the search from the encoder's latent):
  how close this generator can get to the face at all;
- E(full): the encoder's latent for the unmasked face: how well E inverts G where nothing is hidden;
- E(center) / E(left): the encoder's latent for the masked face (what `--iters 0` starts from);
- search(center) / search(left): the model's recommended search (at least 100 iterations) from E's latent;
- random start: the same search from a random latent, so E's head start can be read as dB.
The gap ceiling - E(full) is the encoder's inversion error; ceiling itself is the generator's limit.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from gcomp import open_model
from gcomp.engine.evaluate import psnr, read_images
from gcomp.engine.images import from_model_output, to_model_input
from gcomp.engine.masks import make_mask


def _psnr_all(faces: list[np.ndarray], x: np.ndarray) -> float:
    return float(np.mean([psnr(f, from_model_output(g)) for f, g in zip(faces, x)]))


def probe(model: str, val: str, limit: int, iters: int, seed: int = 0) -> dict:
    with open_model(model, backend="onnxruntime") as m:
        faces = [im for _, im in read_images(val, limit)]
        y = np.stack([to_model_input(f, m.size) for f in faces])
        hp = replace(m.settings(), iters=max(iters, m.settings().iters or 0), patience=0)
        enc = m.encoder("encoder")
        be = m.backend
        ones = np.ones((len(y), 1, m.size, m.size), np.float32)
        row = {"model": model, "n": len(y), "search": {"iters": hp.iters, "lr": hp.lr, "lam": hp.lam}}
        z_full = enc(y, ones)
        row["E(full)"] = _psnr_all(faces, be.generate(z_full))
        fit = be.search(z_full, y, ones, replace(hp, lam=0.0, iters=2 * hp.iters))
        row["ceiling"] = _psnr_all(faces, be.generate(fit.z))
        rng = np.random.default_rng(seed)
        for kind in ("center", "left"):
            known = np.stack([make_mask(kind, m.size)[None]] * len(y)).astype(np.float32)
            z0 = enc(y * known, known)
            row[f"E({kind})"] = _psnr_all(faces, be.generate(z0))
            row[f"search({kind})"] = _psnr_all(faces, be.generate(be.search(z0, y, known, hp).z))
            zr = rng.uniform(-1, 1, z0.shape).astype(np.float32)  # the prior G was trained on
            row[f"random start({kind})"] = _psnr_all(faces, be.generate(be.search(zr, y, known, hp).z))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--val", required=True)
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for model in a.models:
        rows.append(probe(model, a.val, a.limit, a.iters))
        print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("model", "n", "search")]
    print("| model | " + " | ".join(keys) + " |\n|" + " --- |" * (len(keys) + 1))
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
