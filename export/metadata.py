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
    defaults         dict  the recommended settings: search (iters, lr, momentum, lam, optimizer, patience),
                           optionally `blend` (what --blend auto stands for) and `masks` {KIND: {KEY: VALUE}}
                           (per mask kind, over the model-wide values): RECOMMENDED unless `gcomp export
                           --recommend` says otherwise
    config_hash      str   ModelConfig.hash() of the checkpoint's config (the architecture)
    model_config     dict  asdict(ModelConfig)
    mask_convention  str   "w: 1 = known pixel, 0 = hole; mask files: white = fill"
Extra keys written by the exporter (see CONVENTIONS and the README's metadata table): compute_precision,
opset, exporter, weights_id (a hash of the checkpoint's G and D state dicts: generator, step and encoder
from one checkpoint carry the same one), value_range, channel_order, layout, loss_at, v_start, z_clip,
description, license, date.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from ..engine.search import EXPORT_RECOMMENDED, SearchParams

KEYS = ("gcomp_version", "gcomp_kind", "size", "channels", "zdim", "precision", "unroll", "batch",
        "defaults", "config_hash", "model_config", "mask_convention")
INT_KEYS = ("size", "channels", "zdim", "unroll", "opset")
JSON_KEYS = ("defaults", "model_config")
KINDS = ("generator", "step", "encoder")  # every graph gcomp writes: read_metadata reads each
MASK_CONVENTION = "w: 1 = known pixel, 0 = hole; mask files: white = fill"
#: the seed's hyperparameters (bamos/dcgan-completion.tensorflow), from gcomp.engine.search (their one source)
SEED_DEFAULTS = SearchParams.seed().recommended()
#: what a fresh export recommends (its `defaults`) unless `gcomp export --recommend` says otherwise
RECOMMENDED = dict(EXPORT_RECOMMENDED)
#: the conventions every exported file states in its metadata (the runtime relies on them)
CONVENTIONS = {
    "value_range": "[-1, 1]",  # images in and out (y, G(z)): uint8 / 127.5 - 1
    "channel_order": "RGB",
    "layout": "NCHW",
    "loss_at": "input z: the step graph's loss output is each image's loss before the first of its unroll steps",
    "v_start": "0: the momentum v starts at zeros for each search",
    "z_clip": "[-1, 1]: z is clipped after every step; the runtime clips the encoder's z to [-1, 1] too",
}
DEFAULT_LICENSE = "unspecified (set it with gcomp export --license)"


def parse_recommend(text: str | dict | None) -> dict[str, Any]:
    """`iters=100,lr=3e-4,blend=poisson:0.75,left.blend=poisson:1` (or a dict) -> RECOMMENDED with those keys
    replaced. Keys: engine.search.RECOMMENDABLE and `blend` (what `--blend auto` stands for), each also as
    KIND.KEY for one mask kind (engine.masks.KINDS; "half" is "left"), stored under defaults["masks"][KIND].
    Checked against SearchParams and the blend parser, so a bad value fails at export."""
    from ..engine.options import PER_MASK

    rec = dict(RECOMMENDED)
    if not text:
        return rec
    given = dict(text) if isinstance(text, dict) else {}
    if isinstance(text, str):
        for part in filter(None, (x.strip() for x in text.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"--recommend: expected KEY=VALUE, got {part!r}")
            given[key.strip()] = value.strip()
    stored = given.pop(PER_MASK, None) or {}  # a dict already in the stored form
    if not isinstance(stored, dict):
        raise ValueError(f"--recommend: {PER_MASK} must map mask kinds to settings, got {stored!r}")
    # collected by mask kind (not by the name typed), so `half.X` and `left.Y` both land on "left"
    per_mask: dict[str, dict] = {}
    typed: dict[str, str] = {}  # kind -> the first name typed for it, for messages
    for name, values in stored.items():
        if not isinstance(values, dict):
            raise ValueError(f"--recommend: {PER_MASK}.{name} must map settings to values, got {values!r}")
        kind = _mask_kind(str(name))
        typed.setdefault(kind, str(name))
        per_mask.setdefault(kind, {}).update(values)
    for key in [k for k in given if "." in k]:
        name, _, setting = key.partition(".")
        kind = _mask_kind(name)
        typed.setdefault(kind, name)
        per_mask.setdefault(kind, {})[setting] = given.pop(key)
    rec.update(_recommended_values(given, ""))
    if per_mask:
        rec[PER_MASK] = {}
        for kind, values in per_mask.items():
            rec[PER_MASK][kind] = _recommended_values(values, f"{typed[kind]}.")
            _check_search({**rec, **rec[PER_MASK][kind]}, f"for the {typed[kind]} mask ")
    _check_search(rec, "")
    return rec


def _mask_kind(name: str) -> str:
    from ..engine.masks import ALIASES, KINDS

    kind = ALIASES.get(name, name)
    if kind not in KINDS or kind == "full":
        raise ValueError(f"--recommend: {name!r} is not a mask kind (KIND.KEY=VALUE, KIND one of "
                         f"{', '.join(k for k in KINDS if k != 'full')})")
    return kind


def _recommended_values(given: dict, prefix: str) -> dict:
    """Recommended KEY=VALUE strings (or values) -> typed values; unknown keys and unparseable values refused."""
    from dataclasses import fields

    from ..engine.blend import blend_name
    from ..engine.search import RECOMMENDABLE

    types = {f.name: f.type for f in fields(SearchParams)}
    out = {}
    for key, value in given.items():
        if key == "blend":
            try:
                out[key] = blend_name(str(value))
            except ValueError as e:
                raise ValueError(f"--recommend: {prefix}{key}: {e}") from None
            if value == "auto":
                raise ValueError(f"--recommend: {prefix}blend=auto names no blend (give poisson:A or none)")
            continue
        if key not in RECOMMENDABLE:
            raise ValueError(f"--recommend: unknown setting '{prefix}{key}' (choose from "
                             f"{', '.join(RECOMMENDABLE + ('blend',))}, each also as KIND.KEY)")
        out[key] = value if key == "optimizer" else _number(value, "int" in str(types[key]), f"{prefix}{key}")
    return out


def _number(value, integer: bool, name: str):
    """A recommended number from its text or value; a whole-number setting refuses 5.7 (not truncated to 5)
    and True (a bool is no count); a real one refuses nan and inf."""
    bad = ValueError(f"--recommend: {name}={value!r} is not {'a whole number' if integer else 'a finite number'}")
    if isinstance(value, bool) or value is None:
        raise bad
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise bad
    return int(number) if integer else number


def _check_search(rec: dict, where: str) -> None:
    """The recommended search settings must make a valid search."""
    from ..engine.search import RECOMMENDABLE

    try:
        SearchParams(**{k: v for k, v in rec.items() if k in RECOMMENDABLE})
    except (TypeError, ValueError) as e:
        raise ValueError(f"--recommend: {where}{e}") from None


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
    before = dict(entries)
    entries.update({k: _encode(k, v) for k, v in meta.items()})
    del model.metadata_props[:]
    for k, v in entries.items():
        model.metadata_props.add(key=k, value=v)
    if path is not None:
        vouching = _reports_vouching_for(path)
        onnx.save(model, path)
        if {k for k, v in entries.items() if before.get(k) != v} <= set(REPORT_KEEPING):
            _restamp(path, vouching)
    return model


#: metadata a validation report stays true under: the recommendations and the free text. Changing any other key
#: (weights_id, unroll, batch, ...) changes what the file claims to be, so a report beside it stops vouching for it.
REPORT_KEEPING = ("defaults", "description", "license", "date")


def _reports_vouching_for(path) -> list:
    """The validation reports beside `path` whose sha256 for it matches the file as it is now."""
    from pathlib import Path

    from ..engine.backends.exported import HASHES_KEY, REPORT_FILES, file_sha256

    path = Path(path)
    found, digest = [], None
    for name in REPORT_FILES:
        rp = path.parent / name
        try:
            report = json.loads(rp.read_text()) if rp.is_file() else {}
        except (OSError, ValueError):
            continue
        hashes = report.get(HASHES_KEY) if isinstance(report, dict) else None
        theirs = hashes.get(path.name) if isinstance(hashes, dict) else None
        if theirs is not None:
            digest = digest or file_sha256(path)
            if theirs == digest:
                found.append((rp, report))
    return found


def _restamp(path, vouching: list) -> None:
    """A report that vouched for `path` before a metadata-only write (a changed recommendation, say) vouches for it
    after: the graph and weights it validated are unchanged, so it names the new sha256."""
    from pathlib import Path

    from ..engine.backends.exported import HASHES_KEY, file_sha256

    if not vouching:
        return
    digest = file_sha256(path)
    for rp, report in vouching:
        report[HASHES_KEY][Path(path).name] = digest
        rp.write_text(json.dumps(report, indent=2))


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


def onnx_weights_id(path) -> str:
    """A weights id computed from an ONNX file's initializers (names, types, shapes, bytes; 16 hex digits), for
    files whose training checkpoint is not available: the bundled model was stamped this way (its generator's
    initializers), since `weights_id` is otherwise a hash of the checkpoint's state dicts."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(onnx.load(os.fspath(path)).graph.initializer, key=lambda t: t.name):
        h.update(f"{init.name}:{init.data_type}:{tuple(init.dims)};".encode())
        h.update(numpy_helper.to_array(init).tobytes())
    return h.hexdigest()[:16]
