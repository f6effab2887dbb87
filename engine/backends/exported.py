"""The contract between `gcomp export` and the runtime: the files' names, the step graph's inputs and
outputs, finding the files and checking their metadata. Every backend of exported files (onnxruntime,
openvino, tensorrt) checks its model here, and the exporter names its graphs' inputs and outputs from here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import BackendError, ModelInfo

GENERATOR_FILE, STEP_FILE = "generator.onnx", "step.onnx"
#: the step graph's inputs (z, v [B, zdim]; y [B, C, H, W]; w [B, 1 or C, H, W]; lr, momentum, lam 0-d)
STEP_INPUTS = ("z", "v", "y", "w", "lr", "momentum", "lam")
STEP_OUTPUTS = ("z_out", "v_out", "loss")
GENERATOR_INPUT, GENERATOR_OUTPUT = "z", "image"
#: metadata key of the hash of the weights a file was exported from (generator, step, encoder must agree)
WEIGHTS_KEY = "weights_id"


def step_feed(z, v, y, w, lr, momentum, lam) -> dict[str, np.ndarray]:
    """The step graph's inputs by name, contiguous float32 (what every runtime of the graph is fed)."""
    f32 = np.float32
    return dict(zip(STEP_INPUTS, (np.ascontiguousarray(z, f32), np.ascontiguousarray(v, f32),
                                  np.ascontiguousarray(y, f32), np.ascontiguousarray(w, f32),
                                  np.array(lr, f32), np.array(momentum, f32), np.array(lam, f32))))


VALIDATION_FILE = "validation.json"


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


def check_validation(folder: Path, allow_unvalidated: bool = False) -> str | None:
    """Refuse an export whose validation failed (validation.json beside the graphs says "ok": false), unless
    allow_unvalidated: then a warning line is returned. No validation.json (an export run with --no-validate,
    or one made before validation existed): accepted."""
    import json

    path = Path(folder) / VALIDATION_FILE
    if not path.is_file():
        return None
    try:
        ok = json.loads(path.read_text()).get("ok")
    except (OSError, ValueError, AttributeError) as e:
        raise BackendError(f"{path}: unreadable validation report ({type(e).__name__}); re-export the model") from None
    if ok is not False:
        return None
    if allow_unvalidated:
        return (f"warning: {path} says this export failed its validation against PyTorch; running it anyway "
                f"(--allow-unvalidated)")
    raise BackendError(f"{path}: this export failed its validation against PyTorch (\"ok\": false); re-export it, "
                       f"or pass --allow-unvalidated (allow_unvalidated=True) to run it anyway")


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
