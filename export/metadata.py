"""Model metadata stored in each exported ONNX file's `metadata_props` (Ultralytics' habit).

Needs only `onnx` (never torch): the runtime reads it to check inputs before inference.
Values are stored as strings; structured values as JSON. `read_metadata` returns parsed types.

Keys (the runtime backends rely on these exact names):
    gcomp_version    str   gcomp version that exported the file
    gcomp_kind       str   "generator" or "step"
    size             int   image side in pixels (32, 64, 128)
    channels         int   image channels
    zdim             int   latent size
    precision        str   "fp32", "fp16" or "bf16" (bf16: weights stored as bf16, computed in fp32)
    unroll           int   momentum steps per call of the step graph (1 for the generator)
    batch            "dynamic" or int (the graph's fixed batch size)
    defaults         dict  the seed's search settings: lr, momentum, lam, iters
    config_hash      str   ModelConfig.hash() of the checkpoint's config
    model_config     dict  asdict(ModelConfig)
    mask_convention  str   "w: 1 = known pixel, 0 = hole; mask files: white = fill"
Extra keys written by the exporter: compute_precision (str), opset (int), exporter (str).
"""
from __future__ import annotations

import json
import os
from typing import Any

from ..engine.search import SearchParams

KEYS = ("gcomp_version", "gcomp_kind", "size", "channels", "zdim", "precision", "unroll", "batch",
        "defaults", "config_hash", "model_config", "mask_convention")
INT_KEYS = ("size", "channels", "zdim", "unroll", "opset")
JSON_KEYS = ("defaults", "model_config")
KINDS = ("generator", "step")
MASK_CONVENTION = "w: 1 = known pixel, 0 = hole; mask files: white = fill"
#: the seed's hyperparameters (bamos/dcgan-completion.tensorflow), from gcomp.engine.search (their one source)
SEED_DEFAULTS = SearchParams.seed().recommended()


class MetadataError(ValueError):
    """An ONNX file without gcomp metadata, or with unreadable values."""


def _encode(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if key in JSON_KEYS or isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _decode(key: str, value: str) -> Any:
    try:
        if key in INT_KEYS:
            return int(value)
        if key == "batch":
            return value if value == "dynamic" else int(value)
        if key in JSON_KEYS:
            return json.loads(value)
    except (ValueError, json.JSONDecodeError) as e:
        raise MetadataError(f"metadata {key}={value!r} is not readable ({e})") from None
    return value


def write_metadata(model, meta: dict[str, Any]):
    """Set `meta` on an onnx.ModelProto (returned) or, given a path, on that file in place.

    Existing keys are replaced; other existing entries are kept.
    """
    import onnx

    path = None
    if isinstance(model, (str, os.PathLike)):
        path = model
        model = onnx.load(path)
    entries = {p.key: p.value for p in model.metadata_props}
    entries.update({k: _encode(k, v) for k, v in meta.items()})
    del model.metadata_props[:]
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)
    if path is not None:
        onnx.save(model, path)
    return model


def read_metadata(model, require: bool = True) -> dict[str, Any]:
    """Parsed metadata of an ONNX file (path) or onnx.ModelProto.

    require=True raises MetadataError when a gcomp key is missing (a file gcomp did not export).
    """
    import onnx

    if isinstance(model, (str, os.PathLike)):
        try:
            model = onnx.load(os.fspath(model), load_external_data=False)
        except Exception as e:  # protobuf DecodeError, missing file
            raise MetadataError(f"{model}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    meta = {p.key: _decode(p.key, p.value) for p in model.metadata_props}
    if require:
        missing = [k for k in KEYS if k not in meta]
        if missing:
            raise MetadataError(f"not a gcomp export: metadata lacks {missing}")
        if meta["gcomp_kind"] not in KINDS:
            raise MetadataError(f"unknown gcomp_kind {meta['gcomp_kind']!r} (expected one of {KINDS})")
    return meta
