"""Export a trained encoder (`gcomp train-encoder`) as encoder.onnx beside a model's step graph.

The runtime (engine/encoder.py) runs it through ONNX Runtime to start the latent search.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import __version__
from ..engine.encoder import ENCODER_FILE
from .metadata import MASK_CONVENTION, write_metadata


def export_encoder(encoder_pt: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "fp32") -> Path:
    """encoder.onnx beside the step graph: inputs `image` [B, C, H, W], `mask` [B, 1, H, W] -> `z`."""
    import torch

    from ..train.encoder import Encoder
    from ..train.model import ModelConfig

    state = torch.load(encoder_pt, map_location="cpu", weights_only=True)
    mcfg = ModelConfig(**state["model_config"])
    E = Encoder(mcfg)
    E.load_state_dict(state["E"])
    E.eval()
    if precision in ("fp16", "bf16"):
        E = E.to(torch.float16 if precision == "fp16" else torch.bfloat16).float()  # round weights, compute fp32
    img = torch.zeros(2, mcfg.channels, mcfg.size, mcfg.size)
    m = torch.ones(2, 1, mcfg.size, mcfg.size)
    path = Path(out_dir) / ENCODER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():  # a small plain CNN: the TorchScript exporter is quick and clean here
        warnings.simplefilter("ignore")
        torch.onnx.export(E, (img, m), str(path), input_names=["image", "mask"], output_names=["z"],
                          dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}, "z": {0: "batch"}},
                          opset_version=17, dynamo=False)
    if precision in ("fp16", "bf16"):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        # weights stored in fp16 (halves the file), cast back to fp32 at load by the runtime
        from onnx import helper

        new_inits, casts = [], []
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 16:
                half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
                new_inits.append(half)
                casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
            else:
                new_inits.append(init)
        del model.graph.initializer[:]
        model.graph.initializer.extend(new_inits)
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(casts + nodes)
        onnx.save(model, str(path))
    write_metadata(path, {"gcomp_version": __version__, "gcomp_kind": "encoder", "size": mcfg.size,
                          "channels": mcfg.channels, "zdim": mcfg.zdim, "precision": precision,
                          "config_hash": state["config_hash"], "model_config": asdict(mcfg),
                          "mask_convention": MASK_CONVENTION, "trained_steps": state["step"]})
    return path
