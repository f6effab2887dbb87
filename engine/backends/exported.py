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


def step_feed(z, v, y, w, lr, momentum, lam) -> dict[str, np.ndarray]:
    """The step graph's inputs by name, contiguous float32 (what every runtime of the graph is fed)."""
    f32 = np.float32
    return dict(zip(STEP_INPUTS, (np.ascontiguousarray(z, f32), np.ascontiguousarray(v, f32),
                                  np.ascontiguousarray(y, f32), np.ascontiguousarray(w, f32),
                                  np.array(lr, f32), np.array(momentum, f32), np.array(lam, f32))))


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
        raise BackendError(f"{gen_path.parent}: generator.onnx and step.onnx come from different models "
                           f"(config hashes {gmeta.get('config_hash')} vs {smeta.get('config_hash')})")
    batch = str(smeta.get("batch", "dynamic"))
    info = ModelInfo(size=_int(smeta, "size", step_path), zdim=_int(smeta, "zdim", step_path),
                     channels=_int(smeta, "channels", step_path), config_hash=str(smeta.get("config_hash", "")),
                     source=str(step_path.parent), meta=dict(smeta))
    return info, _int(smeta, "unroll", step_path), int(batch) if batch.isdigit() else None


def onnx_metadata(path: Path) -> dict[str, str]:
    """The raw metadata_props of an ONNX file (for runtimes that do not expose them)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf errors, truncated files
        raise BackendError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}
