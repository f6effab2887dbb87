"""Validate exported graphs against the PyTorch reference (train/reference.py, autograd), optimum-style.

1. onnx.checker and strict shape inference on both files.
2. One step on ONNX Runtime (CPU) vs loss_and_grad + momentum_step on random inputs (z, y ~ U[-1, 1],
   v = 0.1 N(0, 1), the center-mask w, lr 0.01, momentum 0.9, lam 0.1; y is then moved >= 1e-3 away from
   G(z), see away_from_kinks); generator image vs G(z). For an unrolled graph (K steps per call) the
   reference runs K steps, both at lr 1e-4: at the seed's 0.01 K chained steps are chaotic on a trained
   model (a 1e-7 difference grows ~3x per step), which would test the dynamics, not the export.
3. A 50-step trajectory (rounded up to a multiple of K) of train.reference.search from the same z0:
   - "trajectory step": one call of the graph from every K-th state the reference visits (v = 0), vs K
     reference steps; the median relative error over the states (the worst is reported too);
   - "trajectory mean loss": the same loop run freely through ONNX Runtime; |mean loss_onnx - mean loss_torch|
     / mean loss_torch, means over the calls of the batch-mean loss. Free-running loops of the seed's momentum
     at lr 0.01 on a trained model are chaotic: they agree for a few steps, then oscillate independently
     around the same level (+-4% on a 150-step-trained DCGAN), so their means are compared, not each step;
     tolerance: the precision's, or 4 standard errors of the two means if larger (few calls when K is large);
   - "trajectory loss curve / final loss / z (info)": the per-call and final differences, reported but
     not checked, for that reason (two final z often differ by 2 in a coordinate: opposite clip bounds).

Relative error is max|a - b| / max|b| over the whole output (b = reference): a per-element ratio blows up
where the reference is ~0 (v entries, clipped z), while this stays a fraction of the output's scale.

The reference is G and D with their weights rounded as the file stores them (storage_rounded) where the graph
computes in fp32 but stores fewer bits (bf16): the rounding is then the same on both sides, so what is left is the
export's own error, held to fp32's tolerances whatever the model's width. What the rounding itself costs (the
rounded model vs the trained one, in PyTorch) is reported as info ("storage rounding" rows): it grows as a model
narrows (fewer terms per sum to average the rounding out), and it is the precision's price, not an export error.
fp16 computes in fp16, which no PyTorch reference reproduces, so it is checked against the trained model.

The report (validation.json) names the weights id and the sha256 of each file it validated: the runtime
(engine/backends/exported.check_validation) refuses a report that does not belong to the files beside it.
validate_encoder does the same for encoder.onnx (encoder_validation.json).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.backends.exported import (ENCODER_INPUTS, ENCODER_OUTPUT, ENCODER_VALIDATION_FILE, GENERATOR_FILE,
                                        HASHES_KEY, STEP_FILE, VALIDATION_FILE, WEIGHTS_KEY, file_sha256,
                                        step_feed)  # noqa: F401 (step_feed: re-exported)
from ..engine.masks import make_mask
from .metadata import SEED_DEFAULTS

RELATIVE_ERROR = "max|onnx - torch| / max|torch| over the output"
#: tolerances on the relative error, per precision and check. Measured values: docs/export.md.
#: fp32: the hand-written gradient matches autograd to ~1e-6 (summation order only); measured <= 8e-7.
#: fp16: weights and network compute in fp16 (~5e-4 rounding per value); the contextual gradient
#:   w * sign(G(z) - y) flips sign on pixels where |G(z) - y| is within rounding, and the gradient is a sum
#:   of +-dG/dz over thousands of pixels that mostly cancel, so it is the least accurate output:
#:   measured 1e-3 to 4e-2 relative on v_out (DESIGN.md: ~1.4e-2 on the gradient); tolerance 1e-1.
#: bf16: weights stored as bf16, compute fp32, checked against the bf16-rounded reference (storage_rounded): the
#:   same fp32 arithmetic on the same weights, so fp32's tolerances. (Against the trained model the rounding alone
#:   moves v_out by 1e-2 to 9e-2 and the trajectory step by up to 0.19 for a gf = df = 4 model: any fixed tolerance
#:   there is a guess about the width; a narrow tiny model failed at 0.20008 > 0.2.)
#: trajectory mean loss: measured <= 1e-3 for every precision; 3e-2 is ~4 standard errors of the
#:   difference of two 50-step means of independent +-4% oscillations.
#: encoder.onnx: its z (a forward pass ending in tanh, like G's image) gets the precision's image tolerance.
_FP32 = {"image": 1e-4, "loss": 1e-4, "z_out": 1e-4, "v_out": 1e-4, "trajectory_step": 1e-4, "trajectory_mean_loss": 3e-2}
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": _FP32,
    "fp16": {"image": 1e-2, "loss": 1e-2, "z_out": 5e-2, "v_out": 1e-1,
             "trajectory_step": 1e-1, "trajectory_mean_loss": 3e-2},
    "bf16": dict(_FP32),
}
TRAJECTORY_STEPS = 50
KINK_MARGIN = 1e-3
UNROLLED_CHECK_LR = 1e-4  # lr of the one-call checks of an unrolled (K > 1) graph; K = 1 uses the seed's 0.01


class ValidationError(RuntimeError):
    """An export whose outputs differ from the PyTorch reference by more than the tolerance."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


class EncoderValidationError(ValidationError, ValueError):
    """An encoder.onnx whose z differs from the PyTorch encoder's by more than the tolerance. Also a ValueError,
    so that `gcomp train-encoder` (which reports ValueErrors as one `error:` line) says so in one line."""


def errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs error, relative error = max|a-b| / max|b|) of a vs the reference b."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return diff, diff / max(scale, 1e-12)


def away_from_kinks(x, y, margin: float = KINK_MARGIN):
    """y moved to at least `margin` from x (staying in [-1, 1]) where it is closer: |w * (x - y)| has a kink
    at x = y, and a 1e-7 rounding difference landing on its other side flips that pixel's gradient sign
    (about 1e-2 of the whole gradient): a coin toss, not an error of the export."""
    import torch

    d = y - x
    near = d.abs() < margin
    up = torch.where(x + margin <= 1, x + margin, x - margin)
    down = torch.where(x - margin >= -1, x - margin, x + margin)
    return torch.where(near, torch.where(d >= 0, up, down), y)


def check_onnx(path: str | Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=False)
    onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)


def session(path: str | Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # ONNX Runtime's idle workers spin after each run; interleaved with the PyTorch reference on a few
    # cores they would compete with its threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def example_inputs(cfg, batch: int, seed: int = 0):
    """Step inputs as torch tensors: z ~ U[-1, 1], v = 0.1 * N(0, 1), y ~ U[-1, 1], the center-mask w, and
    the seed's lr, momentum and lam (what the exporter traces and validation feeds)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    s, c = cfg.size, cfg.channels
    z = torch.rand(batch, cfg.zdim, generator=g) * 2 - 1
    v = torch.randn(batch, cfg.zdim, generator=g) * 0.1
    y = torch.rand(batch, c, s, s, generator=g) * 2 - 1
    w = torch.from_numpy(make_mask("center", s)).expand(batch, 1, s, s).contiguous()
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return z, v, y, w, f32(SEED_DEFAULTS["lr"]), f32(SEED_DEFAULTS["momentum"]), f32(SEED_DEFAULTS["lam"])


def per_out_channel(s):
    """A per-output-channel scale shaped for a conv's weight [out, in, k, k]."""
    return s[:, None, None, None]


def storage_rounded(G, D, precision: str):
    """(G, D) as the export of `precision` stores them, for a reference that rounds as the file does: copies whose
    BatchNorm-folded weights and biases are rounded to the storage dtype (train.adjoint.PRECISIONS) where it differs
    from the compute dtype (bf16); otherwise G and D themselves. The layers as train.adjoint._Folded folds them."""
    import copy

    from ..train.adjoint import PRECISIONS

    compute, storage = PRECISIONS[precision]
    if storage == compute:
        return G, D
    G, D = copy.deepcopy(G).eval(), copy.deepcopy(D).eval()
    layers = [(G.fc, G.bn0, lambda s: s.repeat_interleave(16)[:, None])]  # G's fc: [C0 * 16, zdim]
    layers += [(d, bn, lambda s: s[None, :, None, None]) for d, bn in zip(G.deconvs, G.bns)]  # [in, out, k, k]
    layers += [(G.deconvs[-1], None, None), (D.convs[0], None, None), (D.fc, None, None)]  # no BatchNorm after
    layers += [(c, bn, per_out_channel) for c, bn in zip(D.convs[1:], D.bns)]
    round_folded(layers, storage)
    return G, D


def round_folded(layers, storage) -> None:
    """Round each (layer, BatchNorm after it or None, how its scale broadcasts over the weight) in place so that
    folding the BatchNorm into the layer (w * s, bias t = beta - mean * s, s = gamma / sqrt(var + eps), in float64,
    as an exporter does) gives values rounded to `storage` (to fp32 precision), while PyTorch still runs the
    unfolded layers: w' = round(w * s) / s and beta' = round(t) + mean * s; a layer without BatchNorm is rounded
    as it is. (Layers with BatchNorm have no bias of their own in gcomp's models.)"""
    import torch

    from ..train.adjoint import _bn_scale_shift

    rnd = lambda t: t.double().to(storage).double()  # noqa: E731 (float64 -> storage, as _Folded._buf rounds)
    with torch.no_grad():
        for layer, bn, per_out in layers:
            if bn is None:
                layer.weight.copy_(rnd(layer.weight))
                if layer.bias is not None:
                    layer.bias.copy_(rnd(layer.bias))
                continue
            s, t = _bn_scale_shift(bn)
            sb, w = per_out(s), layer.weight.double()
            layer.weight.copy_(torch.where(sb != 0, rnd(w * sb) / sb, w))  # s = 0: the folded weight is 0 anyway
            bn.bias.copy_(rnd(t) + bn.running_mean.double() * s)


def hashes(*paths: Path) -> dict[str, str]:
    """{file name: sha256} of the files a report validated (the runtime matches them to the files beside it)."""
    return {Path(p).name: file_sha256(p) for p in paths}


def write_report(path: Path, report: dict[str, Any], raise_on_failure: bool, what: str,
                 error: type[ValidationError] = ValidationError) -> dict[str, Any]:
    """Write the report; with raise_on_failure, a failed one raises `error` with the digits that decide."""
    Path(path).write_text(json.dumps(report, indent=2))
    if raise_on_failure and not report["ok"]:
        bad = [r for r in report["checks"] if not r["ok"]]
        lines = ", ".join(f"{r['name']}: relative error {decisive(r['max_rel'], r['tol'])} > tolerance {r['tol']:.5g} "
                          f"(max abs {r['max_abs']:.3g})" for r in bad)  # the digits that decide (0.2001 > 0.2)
        raise error(f"{what} failed ({report['precision']}): {lines}", report)
    return report


def _row(name: str, a, b, tol: float | None) -> dict[str, Any]:
    abs_err, rel_err = errors(a, b)
    ok = True if tol is None else bool(rel_err <= tol and math.isfinite(rel_err))
    return {"name": name, "max_abs": abs_err, "max_rel": rel_err, "tol": tol, "ok": ok}


def validate_export(out_dir: str | Path, G, D, cfg, precision: str = "fp32", batch_size: int = 4, seed: int = 0,
                    trajectory_steps: int = TRAJECTORY_STEPS, raise_on_failure: bool = True) -> dict[str, Any]:
    """Validate out_dir/generator.onnx and out_dir/step.onnx against G and D (as the file stores them: see
    storage_rounded); write out_dir/validation.json, naming the weights id and the files' sha256; return the report."""
    import torch

    from ..engine.search import SearchParams
    from ..train.reference import loss_and_grad, momentum_step, search
    from .metadata import read_metadata

    out = Path(out_dir)
    gen_path, step_path = out / GENERATOR_FILE, out / STEP_FILE
    tol = TOLERANCES[precision]
    for p in (gen_path, step_path):
        check_onnx(p)
    meta = read_metadata(step_path)
    unroll = meta["unroll"]
    if meta["batch"] != "dynamic":
        batch_size = meta["batch"]
    G.eval()
    D.eval()
    trained = G, D
    G, D = storage_rounded(G, D, precision)  # the reference from here on

    z, v, y, w, lr, mom, lam = example_inputs(cfg, batch_size, seed)
    with torch.no_grad():
        y = away_from_kinks(G(z), y)
    rows = []
    # -- generator ---------------------------------------------------------------------------------
    gen = session(gen_path)
    with torch.no_grad():
        ref_img = G(z).numpy()
    img = gen.run(None, {"z": z.numpy()})[0]
    rows.append(_row("image", img, ref_img, tol["image"]))

    # -- one call of the step graph (K steps) vs K reference steps ---------------------------------
    step = session(step_path)
    # K chained steps at the seed's lr amplify a 1e-7 difference ~3x per step (lr * |Hessian| >> 1 on a trained
    # model, measured: 4e-2 after 5 steps from one kink flip), so a K-step call is checked at UNROLLED_CHECK_LR
    check_lr = float(lr) if unroll == 1 else UNROLLED_CHECK_LR
    zo, vo, loss = step.run(None, step_feed(z, v, y, w, check_lr, mom, lam))
    zr, vr = z, v
    for k in range(unroll):
        l_k, grad = loss_and_grad(G, D, zr, y, w, float(lam))
        if k == 0:
            ref_loss = l_k
        zr, vr = momentum_step(zr, vr, grad, check_lr, float(mom))
    rows.append(_row("loss", loss, ref_loss.numpy(), tol["loss"]))
    rows.append(_row("z_out", zo, zr.numpy(), tol["z_out"]))
    rows.append(_row("v_out", vo, vr.numpy(), tol["v_out"]))
    if trained[0] is not G:
        rows += _rounding_rows(trained, (G, D), z, v, y, w, check_lr, float(mom), float(lam))

    # -- 50 steps of engine.reference.search from z0, and the same loop through ONNX Runtime ------------
    # The loss is piecewise smooth (|.|, ReLU masks), so rounding differences of 1e-7 flip a kink now and
    # then and two free-running trajectories drift apart (chaotically, for a trained model at the seed's
    # lr): compare (a) the gradient at every state the reference visits ("teacher-forced"; the median over
    # steps, robust to a rare kink flip) and (b) the loss levels the two free-running loops reach.
    calls = -(-trajectory_steps // unroll)
    n_steps = calls * unroll
    hp = SearchParams(iters=n_steps, lr=float(lr), momentum=float(mom), lam=float(lam))
    visited = [z.clone()]
    z_ref, final_ref, hist_ref = search(G, D, z, y, w, hp, callback=lambda i, zi, li: visited.append(zi.clone()))
    grad_rel, grad_abs = [], []
    zeros = torch.zeros_like(z)
    for i in range(calls):  # one call from every K-th visited state, v = 0 (K = 1: v_out = -lr * grad)
        zi = visited[i * unroll]
        vo = step.run(None, step_feed(zi, zeros, y, w, check_lr, mom, lam))[1]
        zr_i, vr_i = zi, zeros
        for _ in range(unroll):
            _, g_i = loss_and_grad(G, D, zr_i, y, w, float(lam))
            zr_i, vr_i = momentum_step(zr_i, vr_i, g_i, check_lr, float(mom))
        grad_abs.append(errors(vo, vr_i.numpy())[0])
        grad_rel.append(errors(vo, vr_i.numpy())[1])
    grad_rel = np.array(grad_rel)
    zt, vt = z.numpy(), np.zeros_like(z.numpy())
    hist = []
    feed_const = step_feed(z, v, y, w, lr, mom, lam)
    for _ in range(calls):
        zt, vt, lt = step.run(None, dict(feed_const, z=zt, v=vt))
        hist.append(float(lt.mean()))
    final = step.run(None, dict(feed_const, z=zt, v=vt))[2]  # the loss at the final z
    hist_ref_at_calls = np.array([hist_ref[i * unroll] for i in range(calls)])
    hist = np.array(hist)
    mean_rel = abs(float(hist.mean()) - float(hist_ref_at_calls.mean())) / abs(float(hist_ref_at_calls.mean()))
    # the two means' own noise (chaotic oscillation, few samples when K is large): 4 standard errors
    se = math.sqrt((hist.var() + hist_ref_at_calls.var()) / len(hist)) / abs(float(hist_ref_at_calls.mean()))
    mean_tol = max(tol["trajectory_mean_loss"], 4 * se)
    curve_abs = np.abs(hist - hist_ref_at_calls)
    final_abs = abs(float(final.mean()) - float(final_ref.mean()))
    z_abs = np.abs(zt - z_ref.numpy())
    rows += [
        {"name": "trajectory step", "max_abs": float(np.median(grad_abs)), "max_rel": float(np.median(grad_rel)),
         "worst_step_rel": float(grad_rel.max()), "tol": tol["trajectory_step"],
         "ok": bool(np.median(grad_rel) <= tol["trajectory_step"])},
        {"name": "trajectory mean loss", "max_abs": abs(float(hist.mean()) - float(hist_ref_at_calls.mean())),
         "max_rel": mean_rel, "tol": mean_tol, "ok": bool(mean_rel <= mean_tol)},
        {"name": "trajectory loss curve (info)", "max_abs": float(curve_abs.max()),
         "max_rel": float(np.max(curve_abs / np.abs(hist_ref_at_calls))), "tol": None, "ok": True,
         "first_step_apart_1e-4": int(np.argmax(curve_abs / np.abs(hist_ref_at_calls) > 1e-4))
         if np.any(curve_abs / np.abs(hist_ref_at_calls) > 1e-4) else None},
        {"name": "trajectory final loss (info)", "max_abs": final_abs,
         "max_rel": final_abs / abs(float(final_ref.mean())), "tol": None, "ok": True},
        {"name": "trajectory z (info)", "max_abs": float(z_abs.max()), "max_rel": float(z_abs.max()),
         "agree_1e-3": float(np.mean(z_abs <= 1e-3)), "tol": None, "ok": True},
    ]

    report = {
        "precision": precision,
        WEIGHTS_KEY: meta.get(WEIGHTS_KEY),
        HASHES_KEY: hashes(gen_path, step_path),
        "reference": "PyTorch (train/reference.py, autograd)" + (
            f", weights rounded to {precision} as the file stores them" if trained[0] is not G else ""),
        "unroll": unroll,
        "batch_size": batch_size,
        "check_lr": check_lr,
        "inputs": f"z, y ~ U[-1,1], v = 0.1*N(0,1), center-mask w, lr {SEED_DEFAULTS['lr']}, "
                  f"momentum {SEED_DEFAULTS['momentum']}, lam {SEED_DEFAULTS['lam']}, seed {seed}",
        "relative_error": RELATIVE_ERROR,
        "trajectory_steps": n_steps,
        "onnx_checker": "ok",
        "checks": rows,
        "ok": all(r["ok"] for r in rows),
    }
    return write_report(out / VALIDATION_FILE, report, raise_on_failure, "validation")


def _rounding_rows(trained, rounded, z, v, y, w, lr: float, momentum: float, lam: float) -> list[dict[str, Any]]:
    """What storing the weights in fewer bits costs, in PyTorch: the rounded model's image and one step's v (the
    gradient) against the trained model's. Info, not checked: the precision's price, which grows as the model
    narrows, not an error of the export."""
    import torch

    from ..train.reference import loss_and_grad, momentum_step

    with torch.no_grad():
        images = [m[0](z).numpy() for m in (rounded, trained)]
    vs = [momentum_step(z, v, loss_and_grad(*m, z, y, w, lam)[1], lr, momentum)[1].numpy() for m in (rounded, trained)]
    return [_row("storage rounding: image (info)", *images, None), _row("storage rounding: v_out (info)", *vs, None)]



ENCODER_MASKS = ("center", "random", "left", "pattern")  # one image each: the encoder sees every kind in training


def validate_encoder(path: str | Path, E, precision: str = "fp32", trained=None, seed: int = 0,
                     raise_on_failure: bool = True) -> dict[str, Any]:
    """Validate encoder.onnx against the PyTorch encoder E (as the file stores it; `trained`: the encoder before
    that rounding, for the info row) on U[-1, 1] images under one mask of each of ENCODER_MASKS; write
    encoder_validation.json beside it (weights ids, sha256); return the report. The tolerance on z is the
    precision's image tolerance (both are a forward pass ending in tanh)."""
    import torch

    from .metadata import read_metadata

    path = Path(path)
    check_onnx(path)
    meta = read_metadata(path, require=False)
    cfg = E.cfg
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(len(ENCODER_MASKS), cfg.channels, cfg.size, cfg.size, generator=g) * 2 - 1
    rng = np.random.default_rng(seed)
    mask = torch.from_numpy(np.stack([make_mask(k, cfg.size, rng=rng) for k in ENCODER_MASKS])[:, None])
    out = session(path).run([ENCODER_OUTPUT], dict(zip(ENCODER_INPUTS, (image.numpy(), mask.numpy()))))[0]
    with torch.no_grad():
        ref = E.eval()(image, mask).numpy()
        rows = [_row("z", out, ref, TOLERANCES[precision]["image"])]
        if trained is not None and trained is not E:
            rows.append(_row("storage rounding: z (info)", ref, trained.eval()(image, mask).numpy(), None))
    report = {
        "precision": precision,
        WEIGHTS_KEY: meta.get(WEIGHTS_KEY),
        "encoder_weights_id": meta.get("encoder_weights_id"),
        HASHES_KEY: hashes(path),
        "reference": "PyTorch (train/encoder.py Encoder)" + (
            f", weights rounded to {precision} as the file stores them" if trained is not None and trained is not E else ""),
        "batch_size": len(ENCODER_MASKS),
        "inputs": f"image ~ U[-1,1], one {'/'.join(ENCODER_MASKS)} mask each, seed {seed}",
        "relative_error": RELATIVE_ERROR,
        "onnx_checker": "ok",
        "checks": rows,
        "ok": all(r["ok"] for r in rows),
    }
    return write_report(path.parent / ENCODER_VALIDATION_FILE, report, raise_on_failure, "encoder validation",
                        EncoderValidationError)


def format_table(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Rows (check, max abs, max rel, tolerance, ok) for printing."""
    out = []
    for r in report["checks"]:
        tol = "-" if r["tol"] is None else f"{r['tol']:.0e}"
        ok = "info" if r["tol"] is None else ("ok" if r["ok"] else "FAIL")
        out.append((r["name"], f"{r['max_abs']:.3g}", decisive(r["max_rel"], r["tol"]), tol, ok))
    return out


def decisive(x: float, tol: float | None) -> str:
    """x with 3 significant digits, or as many more as it takes to show which side of tol it is on: 0.20008 against
    0.2 prints as 0.2001, not 0.2 (which would read as passing)."""
    for digits in range(3, 10):
        s = f"{x:.{digits}g}"
        if tol is None or not math.isfinite(x) or ((float(s) <= tol) == (x <= tol) and (float(s) != tol or x == tol)):
            return s
    return repr(x)
