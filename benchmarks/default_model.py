"""How the bundled default model was chosen, tuned and packaged (reproducible).

    python benchmarks/default_model.py select  runs/snapshots/*.pt --val ../shared/data/celeba64/val.tar
    python benchmarks/default_model.py tune    runs/snapshots/step_N.pt --val ../shared/data/celeba64/val.tar
    python benchmarks/default_model.py package runs/snapshots/step_N.pt --iters 0 --lr 3e-4 --card-json stats.json

select: completion quality (center and half masks, whole-image PSNR on the first --limit val images) of each
checkpoint, searched from a random start at fixed settings; the best mean wins, not the last one.
tune: PSNR for a grid of (lr, iters) including the seed's own (0.01, 1000) on the chosen checkpoint.
package: fp32 and bf16-weight ONNX export (validated), tuned defaults written into the metadata,
models/default/ filled with the smaller one that passes validation, and a model card.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from gcomp import CompleteOptions, SearchParams, open_model
from gcomp.engine.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "models" / "default"


def score(model, val, limit, iters, lr, masks=("center",), optimizer="momentum", precision=None) -> dict:
    opts = CompleteOptions(batch_size=64, init="random", search=SearchParams(iters=iters, lr=lr, optimizer=optimizer))
    with open_model(model, precision=precision) as m:
        res, _ = evaluate(m, val, masks, opts, limit, log=lambda msg: None)
    return {r.mask: r.scores for r in res}


def select(a) -> None:
    """Each snapshot searched from a random start (no encoder is trained for it yet), so the score is the
    generator's: can it fill these holes at all? The best mean whole-image PSNR over the mask kinds wins."""
    rows = []
    masks = tuple(a.masks.split(","))
    for ck in sorted(a.checkpoints, key=lambda p: int(Path(p).stem.split("_")[-1])):
        t0 = time.perf_counter()
        per = {k: v["gcomp"] for k, v in score(ck, a.val, a.limit, a.iters, a.lr, masks, precision=a.precision).items()}
        mean = sum(v["psnr"] for v in per.values()) / len(per)
        rows.append({"checkpoint": str(ck), "mean_psnr": mean, "masks": per})
        print(f"{ck}: " + ", ".join(f"{k} {v['psnr']:.2f} dB / {v['ssim']:.3f}" for k, v in per.items())
              + f", mean {mean:.2f} dB ({time.perf_counter() - t0:.0f} s)", flush=True)
    best = max(rows, key=lambda r: r["mean_psnr"])
    print(f"best: {best['checkpoint']}")
    Path(a.out).write_text(json.dumps({"settings": vars(a) | {"checkpoints": None}, "rows": rows, "best": best},
                                      indent=2, default=str))


def tune(a) -> None:
    rows = []
    for lr, iters in [(0.01, 1000), (0.01, 100), (1e-3, 100), (3e-4, 100), (1e-4, 100), (3e-4, 50)]:
        t0 = time.perf_counter()
        s = score(a.checkpoint, a.val, a.limit, iters, lr)["center"]["gcomp"]
        rows.append({"lr": lr, "iters": iters, **s, "seconds": time.perf_counter() - t0})
        print(f"lr {lr:g} iters {iters}: PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f} "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


def package(a) -> None:
    from gcomp.export import export_model, write_metadata

    tmp = ROOT / "runs" / "package"
    shutil.rmtree(tmp, ignore_errors=True)
    seed = SearchParams.seed()
    defaults = {"iters": a.iters, "lr": a.lr, "momentum": seed.momentum, "lam": seed.lam, "optimizer": "momentum",
                "patience": a.patience}
    chosen, report = None, {}
    for prec in ("bf16", "fp16", "fp32"):
        try:
            r = export_model(a.checkpoint, tmp / prec, precision=prec)
        except Exception as e:  # validation failed: try the next, larger precision
            print(f"{prec}: {e}")
            continue
        report[prec] = r.get("validation")
        chosen = tmp / prec
        break
    if chosen is None:
        raise SystemExit("no precision passed validation")
    for f in ("generator.onnx", "step.onnx"):
        write_metadata(chosen / f, {"defaults": defaults})
    DEST.mkdir(parents=True, exist_ok=True)
    for f in ("generator.onnx", "step.onnx"):
        shutil.copy(chosen / f, DEST / f)
    if a.encoder:
        from gcomp.export.encoder import export_encoder

        export_encoder(a.encoder, DEST, precision=chosen.name if chosen.name != "fp32" else "fp32")
    stats = json.loads(Path(a.card_json).read_text()) if a.card_json else {}
    (DEST / "model.json").write_text(json.dumps({"checkpoint": str(a.checkpoint), "precision": chosen.name,
                                                 "defaults": defaults, **stats}, indent=2, default=str))
    print(f"packaged {chosen.name} into {DEST}: " + ", ".join(
        f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(DEST.glob("*.onnx"))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("select")
    s.add_argument("checkpoints", nargs="+")
    s.add_argument("--val", required=True)
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--masks", default="center,half")
    s.add_argument("--precision", default=None, help="the torch backend's (bf16: faster on CPUs with bf16 units)")
    s.add_argument("--iters", type=int, default=100)
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--out", default=str(ROOT / "runs" / "select.json"))
    t = sub.add_parser("tune")
    t.add_argument("checkpoint")
    t.add_argument("--val", required=True)
    t.add_argument("--limit", type=int, default=100)
    t.add_argument("--out", default=str(ROOT / "runs" / "tune.json"))
    p = sub.add_parser("package")
    p.add_argument("checkpoint")
    p.add_argument("--iters", type=int, default=0, help="0: the encoder's latent, no search (measured best, "
                   "benchmarks/results/quality.md)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--encoder", default=None, help="encoder.pt to export beside the graphs")
    p.add_argument("--card-json", default=None)
    a = ap.parse_args()
    {"select": select, "tune": tune, "package": package}[a.cmd](a)


if __name__ == "__main__":
    main()
