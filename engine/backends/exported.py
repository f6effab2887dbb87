"""The contract between `gcomp export` and the runtime: the files' names, the step graph's inputs and
outputs, finding the files and checking their metadata. Every backend of exported files (onnxruntime,
openvino, tensorrt) checks its model here, and the exporter names its graphs' inputs and outputs from here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import BackendError, ModelInfo

GENERATOR_FILE, STEP_FILE = "generator.onnx", "step.onnx"
#: the step graph's inputs (z, v [B, zdim]; y [B, C, H, W]; w [B, 1 or C, H, W]; lr, momentum, lam 0-d)
STEP_INPUTS = ("z", "v", "y", "w", "lr", "momentum", "lam")
STEP_OUTPUTS = ("z_out", "v_out", "loss")
GENERATOR_INPUT, GENERATOR_OUTPUT = "z", "image"
#: the encoder's inputs (image [B, C, H, W], mask [B, 1, H, W]) and output (z [B, zdim])
ENCODER_INPUTS, ENCODER_OUTPUT = ("image", "mask"), "z"
#: metadata key of the hash of the weights a file was exported from (generator, step, encoder must agree)
WEIGHTS_KEY = "weights_id"

# What each graph input and output is, stored as its ONNX doc_string, so a runtime without gcomp can read the
# contract off the file (onnx.load(path).graph.input[i].doc_string).
_IMAGE = ("in [-1, 1], RGB, NCHW, float32: x = uint8 / 127.5 - 1, back to 8 bits as "
          "uint8 = clip(floor((x + 1) * 127.5 + 0.5), 0, 255)")
_LOSS = "L(z) = sum over pixels |w * (G(z) - y)| + lam * softplus(-D(G(z))), per image"
_UPDATE = ("each of the K steps (metadata unroll): v' = momentum * v - lr * dL/dz; "
           "z' = clip(z - momentum * v + (1 + momentum) * v', -1, 1), with " + _LOSS)
IO_DOCS: dict[str, dict[str, str]] = {
    "generator": {
        "z": "latent [batch, zdim] in [-1, 1]",
        "image": f"G(z) [batch, C, H, W] {_IMAGE}",
    },
    "step": {
        "z": "latent [batch, zdim] in [-1, 1]: at a search's start the encoder's z (clipped to [-1, 1]) or "
             "uniform random, then the previous call's z_out",
        "v": "momentum buffer [batch, zdim]: zeros at a search's start, then the previous call's v_out",
        "y": f"target image [batch, C, H, W] {_IMAGE}; only pixels with w > 0 count",
        "w": "per-pixel weight of the contextual loss [batch, 1 or C, H, W] (one mask for all channels or one per "
             "channel): 1 = known pixel, 0 = hole to fill (mask files: white = fill); fractional for a weighted loss",
        "lr": "learning rate, 0-d (the model's recommendation: metadata defaults.lr)",
        "momentum": "momentum, 0-d (metadata defaults.momentum)",
        "lam": "weight of the perceptual term lam * softplus(-D(G(z))), 0-d (metadata defaults.lam)",
        "z_out": f"z after K steps [batch, zdim]: {_UPDATE}",
        "v_out": "v after K steps [batch, zdim] (v' of the update rule; feed it back as v)",
        "loss": f"each image's loss [batch] at the input z, before the first of the K steps: {_LOSS}",
    },
    "encoder": {
        "image": f"target image [batch, C, H, W] {_IMAGE}; hole pixels are ignored (multiplied by mask)",
        "mask": "[batch, 1, H, W]: 1 = known pixel, 0 = hole to fill (mask files: white = fill)",
        "z": "the search's starting latent [batch, zdim] (tanh; the runtime clips it to [-1, 1]). Where the "
             "model recommends iters 0 (metadata defaults.iters) this is the answer: the encoder's latent, then "
             "the blend of G(z) into the known pixels, with no search step",
    },
}


def step_feed(z, v, y, w, lr, momentum, lam) -> dict[str, np.ndarray]:
    """The step graph's inputs by name, contiguous float32 (what every runtime of the graph is fed)."""
    f32 = np.float32
    return dict(zip(STEP_INPUTS, (np.ascontiguousarray(z, f32), np.ascontiguousarray(v, f32),
                                  np.ascontiguousarray(y, f32), np.ascontiguousarray(w, f32),
                                  np.array(lr, f32), np.array(momentum, f32), np.array(lam, f32))))


VALIDATION_FILE = "validation.json"  # gcomp export's report on generator.onnx and step.onnx
ENCODER_VALIDATION_FILE = "encoder_validation.json"  # gcomp train-encoder's report on encoder.onnx
REPORT_FILES = (VALIDATION_FILE, ENCODER_VALIDATION_FILE)
#: a report's key for the sha256 of each file it validated ({file name: hex digest}): a verdict about other files
#: (a report copied from another export, graphs replaced after it) must not pass for one about these
HASHES_KEY = "sha256"


def check_model_path(model: str | Path, suffixes: tuple[str, ...] = (".onnx",)) -> Path:
    """The export folder of `model`: the folder itself, or the folder of a generator/step file. Any other
    file (encoder.onnx, an unrelated .onnx) is refused by its name rather than silently standing for the
    graphs beside it."""
    p = Path(model)
    if p.is_dir():
        return p
    stems = (Path(GENERATOR_FILE).stem, Path(STEP_FILE).stem)
    if p.suffix.lower() not in suffixes or p.stem not in stems:
        names = ", ".join(s + suffixes[0] for s in stems)
        raise BackendError(f"{p}: not a gcomp export's graph (expected {names}); pass the export folder "
                           f"(the one with {Path(STEP_FILE).stem}{suffixes[0]}) or one of those files")
    return p.parent


def file_sha256(path: str | Path, memo: dict | None = None) -> str:
    """The file's sha256 (hex). memo: the digests one open_backend has taken so far (Backend.file_digests), so the
    validation check and OpenVINO's cache folder read each graph once; keyed by the file's identity and stat, so a
    file rewritten in between is hashed again."""
    import hashlib

    key = None
    if memo is not None:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key in memo:
            return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if key is not None:
        memo[key] = h.hexdigest()
    return h.hexdigest()


def read_report(path: Path) -> dict:
    import json

    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BackendError(f"{path}: unreadable validation report ({type(e).__name__}); re-export the model") from None
    hashes = report.get(HASHES_KEY, {}) if isinstance(report, dict) else None
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        raise BackendError(f"{path}: unreadable validation report (not a JSON object with a {HASHES_KEY} map); "
                           f"re-export the model")
    return report


def report_mismatch(path: Path, report: dict, digests: dict | None = None) -> str | None:
    """Why the report at `path` is not about the files beside it (a file it names differs from the one it
    validated), or None. A named file that is absent is not this check's business (the backend says it is
    missing; a report left beside a removed encoder.onnx describes nothing)."""
    for name, digest in sorted(report.get(HASHES_KEY, {}).items()):
        f = path.parent / name
        actual = file_sha256(f, digests) if f.is_file() else digest
        if actual != digest:
            ids = f"weights id {report.get(WEIGHTS_KEY)} in the report, {onnx_metadata(f).get(WEIGHTS_KEY)} in the file"
            return f"{name} is not the file it validated (sha256 {actual[:12]}..., the report's {digest[:12]}...; {ids})"
    return None


def check_validation(folder: Path, allow_unvalidated: bool = False, digests: dict | None = None) -> list[str]:
    """Refuse an export whose validation failed (a report beside the files says "ok": false) or whose report
    belongs to other files (the sha256 it names differ from the files'), unless allow_unvalidated: then one
    warning line each is returned. No report (an export run with --no-validate, or from before validation):
    accepted. A report naming no hashes (from an older gcomp) cannot be matched: a passing one runs with a
    warning line. digests: file_sha256's memo, kept for the backend."""
    warnings = []
    for name in REPORT_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        report = read_report(path)
        mismatch = report_mismatch(path, report, digests)
        if mismatch:
            problem = f"this report is about other files: {mismatch}"
        elif report.get("ok") is False:
            problem = "this export failed its validation against PyTorch (\"ok\": false)"
        else:
            if HASHES_KEY not in report:
                warnings.append(f"warning: {path} names no file hashes (an older gcomp's report), so it cannot "
                                f"show that it validated these files; re-export the model to be sure")
            continue
        if not allow_unvalidated:
            raise BackendError(f"{path}: {problem}; re-export it, or pass --allow-unvalidated "
                               f"(allow_unvalidated=True) to run it anyway")
        warnings.append(f"warning: {path}: {problem}; running it anyway (--allow-unvalidated)")
    return warnings


def model_files(model: str | Path, suffix: str = ".onnx") -> tuple[Path, Path]:
    """(generator, step) files with `suffix` from an export folder or from either file's path."""
    p = Path(model)
    folder = p if p.is_dir() else p.parent
    gen, step = folder / (Path(GENERATOR_FILE).stem + suffix), folder / (Path(STEP_FILE).stem + suffix)
    missing = [f.name for f in (gen, step) if not f.is_file()]
    if missing:
        flag = " --trt" if suffix == ".engine" else ""
        raise BackendError(f"{folder}: missing {', '.join(missing)} (run `gcomp export CHECKPOINT --out {folder}{flag}`)")
    return gen, step


def _int(meta: dict, key: str, path: Path) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise BackendError(f"{path}: metadata key {key!r} missing or not an integer; "
                           f"was it written by `gcomp export`?") from None


def export_info(gen_path: Path, gmeta: dict, step_path: Path, smeta: dict) -> tuple[ModelInfo, int, int | None]:
    """(ModelInfo, unroll, fixed batch or None) from the two graphs' metadata (string values),
    refusing files that are not gcomp's or that come from two different models."""
    for path, meta, kind in ((gen_path, gmeta, "generator"), (step_path, smeta, "step")):
        if meta.get("gcomp_kind") != kind:
            raise BackendError(f"{path}: not a gcomp {kind} graph (metadata gcomp_kind="
                               f"{meta.get('gcomp_kind')!r}); re-export it with `gcomp export`")
    if gmeta.get("config_hash") != smeta.get("config_hash"):
        raise BackendError(f"{gen_path.parent}: {gen_path.name} and {step_path.name} come from different models "
                           f"(config hashes {gmeta.get('config_hash')} vs {smeta.get('config_hash')})")
    check_weights(gen_path, gmeta, step_path, smeta)
    batch = str(smeta.get("batch", "dynamic"))
    info = ModelInfo(size=_int(smeta, "size", step_path), zdim=_int(smeta, "zdim", step_path),
                     channels=_int(smeta, "channels", step_path), config_hash=str(smeta.get("config_hash", "")),
                     source=str(step_path.parent), meta=dict(smeta))
    return info, _int(smeta, "unroll", step_path), int(batch) if batch.isdigit() else None


def check_weights(path_a: Path, meta_a: dict, path_b: Path, meta_b: dict) -> None:
    """Refuse two files exported from different checkpoints (metadata `weights_id`: a hash of the weights
    they were exported from). The architecture's config hash alone cannot tell two training runs apart.
    Files from before weights ids existed carry none on either side and are accepted."""
    a, b = meta_a.get(WEIGHTS_KEY), meta_b.get(WEIGHTS_KEY)
    if a is None and b is None:
        return
    if a != b:
        raise BackendError(f"{path_a} and {path_b.name} come from different checkpoints (weights ids {a} vs {b}); "
                           f"export them together (gcomp export, gcomp train-encoder)")


def onnx_metadata(path: Path) -> dict[str, str]:
    """The raw metadata_props of an ONNX file (for runtimes that do not expose them)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf errors, truncated files
        raise BackendError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}
