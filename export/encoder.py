"""Export a trained encoder (`gcomp train-encoder`) as encoder.onnx beside a model's step graph, and validate it.

The runtime (engine/encoder.py) runs it through ONNX Runtime to start the latent search. It is exported as the
generator and step graphs are (onnx_export._export_graph: torch.onnx's dynamo exporter, the step graph's opset,
a dynamic batch axis, documented inputs and outputs) and checked against the PyTorch encoder
(validate.validate_encoder, encoder_validation.json).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from ..engine.backends.exported import (ENCODER_INPUTS, ENCODER_OUTPUT, ENCODER_VALIDATION_FILE, STEP_FILE,
                                        WEIGHTS_KEY)
from ..engine.encoder import ENCODER_FILE
from .metadata import CONVENTIONS, DEFAULT_LICENSE, MASK_CONVENTION, RECOMMENDED, read_metadata, write_metadata

PRECISIONS = ("fp32", "fp16", "bf16")
LOW = {"fp16": np.float16}  # storage dtypes (bf16: ml_dtypes.bfloat16, imported when needed)
MIN_STORED_LOW = 17  # weights of fewer values stay float32: a Cast each would cost more than the bytes saved


def _generator_weights_id(state: dict) -> str | None:
    """The weights id of the generator checkpoint the encoder was trained for: stored by train-encoder, else
    (an encoder.pt from before weights ids) computed from that checkpoint if it is still there."""
    if state.get(WEIGHTS_KEY):
        return state[WEIGHTS_KEY]
    model = (state.get("config") or {}).get("model")
    if model and Path(model).exists():
        from ..train.checkpoint import load_models, weights_id

        _, G, D = load_models(model)
        return weights_id(G, D)
    return None


def _low_dtype(precision: str):
    import ml_dtypes

    return LOW.get(precision, ml_dtypes.bfloat16)


def _stored_low(arr: np.ndarray) -> bool:
    """Whether a weight is stored in the low precision (else float32)."""
    return arr.dtype == np.float32 and arr.size >= MIN_STORED_LOW


def stored_encoder(E, precision: str):
    """E as encoder.onnx stores it (a copy; E itself for fp32): what is exported and what validation compares the
    file with. The dynamo exporter folds each BatchNorm into the conv before it, so the weights rounded to fp16 /
    bf16 are the folded ones: validate.round_folded rounds them so (and the layers without BatchNorm as they are),
    and storing the exported initializers in that type (_store_weights) then changes nothing."""
    import copy

    from ..train.adjoint import PRECISIONS
    from .validate import per_out_channel, round_folded

    if precision == "fp32":
        return E
    E = copy.deepcopy(E).eval()
    layers = [(E.convs[0], None, None), (E.fc, None, None)] + [(c, bn, per_out_channel) for c, bn in zip(E.convs[1:], E.bns)]
    round_folded(layers, PRECISIONS[precision][1])
    return E


def _store_weights(model, precision: str) -> None:
    """fp16 / bf16 storage: each float32 weight (MIN_STORED_LOW values or more) stored in that type and cast back
    to float32 at load (ONNX Runtime folds the Cast), so the file halves and the network computes in fp32.
    The weights were rounded before the export (stored_encoder), so this changes them by fp32 rounding only; a
    weight that was not (an exporter transforming them another way) is refused, since the file would then
    differ from the reference validation compares it with."""
    import onnx
    from onnx import helper, numpy_helper

    dtype = _low_dtype(precision)
    new_inits, casts = [], []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if _stored_low(arr):
            if np.abs(arr.astype(dtype).astype(np.float32) - arr).max() > 1e-5 * np.abs(arr).max():
                raise RuntimeError(f"encoder export: initializer {init.name} is not {precision}-rounded (did the "
                                   f"exporter transform the weights?); its stored values would differ from the reference")
            low = numpy_helper.from_array(arr.astype(dtype), f"{init.name}_{precision}")
            new_inits.append(low)
            casts.append(helper.make_node("Cast", [low.name], [init.name], to=onnx.TensorProto.FLOAT))
        else:
            new_inits.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(new_inits)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes)


def export_encoder(encoder_pt: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp32",
                   validate: bool = True) -> Path:
    """encoder.onnx beside the step graph: inputs `image` [B, C, H, W], `mask` [B, 1, H, W] -> `z`.

    precision: the weights' storage (fp32, fp16, bf16); the network always computes in fp32. The metadata
    carries the generator's weights id (the runtime refuses an encoder trained for another checkpoint) and
    the recommended settings and opset of the step graph beside it (else RECOMMENDED, DEFAULT_OPSET). Unless
    validate=False, the file is compared with the PyTorch encoder (encoder_validation.json beside it;
    ValidationError when it fails, the file and report staying for debugging: the runtime refuses them)."""
    import torch

    from ..train.encoder import Encoder
    from ..train.model import ModelConfig

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    state = torch.load(encoder_pt, map_location="cpu", weights_only=True)
    mcfg = ModelConfig(**state["model_config"])
    E = Encoder(mcfg)
    E.load_state_dict(state["E"])
    E.eval()
    out = Path(out_dir)
    path, step = out / ENCODER_FILE, out / STEP_FILE
    wid = _generator_weights_id(state)
    step_meta = read_metadata(step, require=False) if step.is_file() else {}
    theirs = step_meta.get(WEIGHTS_KEY)
    if wid is not None and theirs is not None and theirs != wid:  # before the encoder beside them is replaced
        raise ValueError(f"{out_dir}: its graphs come from another checkpoint (weights id {theirs}; this encoder was "
                         f"trained for {wid}): the runtime would refuse the pair")
    out.mkdir(parents=True, exist_ok=True)
    (out / ENCODER_VALIDATION_FILE).unlink(missing_ok=True)  # it judged the encoder.onnx about to be replaced
    stored = stored_encoder(E, precision)
    opset = _opset(step_meta)
    model = _export(stored, mcfg, precision, opset)
    write_metadata(model, _metadata(state, mcfg, E, precision, opset, step_meta.get("defaults", RECOMMENDED), wid))
    import onnx

    onnx.save(model, str(path))
    if validate:
        from .validate import validate_encoder

        validate_encoder(path, stored, precision, trained=E)
    return path


def _opset(step_meta: dict) -> int:
    """The step graph's opset (gcomp export --opset), so the files of one model need the same runtime support."""
    from .onnx_export import DEFAULT_OPSET, OPSETS

    opset = step_meta.get("opset", DEFAULT_OPSET)
    return opset if opset in OPSETS else DEFAULT_OPSET


def _export(E, mcfg, precision: str, opset: int):
    """E -> onnx.ModelProto, as the generator and step graphs are exported (torch.onnx's dynamo exporter, a batch
    axis named 'batch', no per-node debug metadata, documented inputs and outputs), weights stored in `precision`."""
    import torch

    from .onnx_export import _document, _export_graph

    img = torch.zeros(2, mcfg.channels, mcfg.size, mcfg.size)
    m = torch.ones(2, 1, mcfg.size, mcfg.size)
    model = _export_graph(E, (img, m), ENCODER_INPUTS, (ENCODER_OUTPUT,), set(ENCODER_INPUTS), True, opset)
    model.graph.name = "gcomp_encoder"
    _document(model, "encoder")
    if precision != "fp32":
        _store_weights(model, precision)
    return model


def _metadata(state: dict, mcfg, E, precision: str, opset: int, defaults: dict, wid: str | None) -> dict:
    import torch

    from ..train.checkpoint import weights_id

    meta = {"gcomp_version": __version__, "gcomp_kind": "encoder", "size": mcfg.size,
            "channels": mcfg.channels, "zdim": mcfg.zdim, "precision": precision, "compute_precision": "fp32",
            "unroll": 1, "batch": "dynamic", "opset": opset, "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
            "defaults": dict(defaults), "config_hash": state["config_hash"], "model_config": asdict(mcfg),
            "mask_convention": MASK_CONVENTION, "trained_steps": state["step"],
            "encoder_weights_id": weights_id(E), **CONVENTIONS,
            "description": f"gcomp encoder (masked image, mask) -> z for a {mcfg.size}x{mcfg.size} DCGAN, "
                           f"{state['step']} training steps",
            "license": DEFAULT_LICENSE,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if wid is not None:
        meta[WEIGHTS_KEY] = wid
    return meta
