"""Export a trained encoder (`gcomp train-encoder`) as encoder.onnx beside a model's step graph.

The runtime (engine/encoder.py) runs it through ONNX Runtime to start the latent search.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from ..engine.backends.exported import STEP_FILE, WEIGHTS_KEY
from ..engine.encoder import ENCODER_FILE
from .metadata import CONVENTIONS, DEFAULT_LICENSE, MASK_CONVENTION, RECOMMENDED, read_metadata, write_metadata

PRECISIONS = ("fp32", "fp16", "bf16")
OPSET = 17  # a small plain CNN: the TorchScript exporter at its opset is quick and clean here


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


def _store_weights(path: Path, precision: str) -> None:
    """fp16 / bf16 storage: each float32 weight (more than 16 values) stored in that type and cast back to
    float32 at load (ONNX Runtime folds the Cast), so the file halves and the network computes in fp32."""
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    dtype = np.float16 if precision == "fp16" else ml_dtypes.bfloat16
    model = onnx.load(str(path))
    new_inits, casts = [], []
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 16:
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
    onnx.save(model, str(path))


def export_encoder(encoder_pt: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp32") -> Path:
    """encoder.onnx beside the step graph: inputs `image` [B, C, H, W], `mask` [B, 1, H, W] -> `z`.

    precision: the weights' storage (fp32, fp16, bf16); the network always computes in fp32. The metadata
    carries the generator's weights id (the runtime refuses an encoder trained for another checkpoint) and
    the recommended settings of the step graph beside it (else RECOMMENDED)."""
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
    img = torch.zeros(2, mcfg.channels, mcfg.size, mcfg.size)
    m = torch.ones(2, 1, mcfg.size, mcfg.size)
    path = Path(out_dir) / ENCODER_FILE
    step = Path(out_dir) / STEP_FILE
    wid = _generator_weights_id(state)
    theirs = read_metadata(step, require=False).get(WEIGHTS_KEY) if step.is_file() else None
    if wid is not None and theirs is not None and theirs != wid:  # before the encoder beside them is replaced
        raise ValueError(f"{out_dir}: its graphs come from another checkpoint (weights id {theirs}; this encoder was "
                         f"trained for {wid}): the runtime would refuse the pair")
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    from ..train.checkpoint import weights_id

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(E, (img, m), str(path), input_names=["image", "mask"], output_names=["z"],
                          dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}, "z": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    if precision != "fp32":
        _store_weights(path, precision)
    defaults = read_metadata(step, require=False).get("defaults", RECOMMENDED) if step.is_file() else RECOMMENDED
    meta = {"gcomp_version": __version__, "gcomp_kind": "encoder", "size": mcfg.size,
            "channels": mcfg.channels, "zdim": mcfg.zdim, "precision": precision, "compute_precision": "fp32",
            "unroll": 1, "batch": "dynamic", "opset": OPSET, "defaults": dict(defaults),
            "config_hash": state["config_hash"], "model_config": asdict(mcfg),
            "mask_convention": MASK_CONVENTION, "trained_steps": state["step"],
            "encoder_weights_id": weights_id(E), **CONVENTIONS,
            "description": f"gcomp encoder (masked image, mask) -> z for a {mcfg.size}x{mcfg.size} DCGAN, "
                           f"{state['step']} training steps",
            "license": DEFAULT_LICENSE,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if wid is not None:
        meta[WEIGHTS_KEY] = wid
    write_metadata(path, meta)
    return path
