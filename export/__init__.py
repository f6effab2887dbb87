"""Export a checkpoint to ONNX (and TensorRT) for the lean runtime, which runs without PyTorch.

Importing this package never imports torch: `read_metadata` and `read_engine_header` need only onnx
(resp. nothing); `export_model` imports torch when called.
"""
from __future__ import annotations

from .metadata import KEYS as METADATA_KEYS
from .metadata import MetadataError, read_metadata, write_metadata
from .trt import EngineMismatchError, TensorRTUnavailable, check_engine_header, read_engine, read_engine_header


def export_model(checkpoint, out_dir, precision="fp32", batch="dynamic", unroll=1, opset=18, trt=False,
                 validate=True, **kwargs):
    """See gcomp.export.onnx_export.export_model."""
    from .onnx_export import export_model as _export

    return _export(checkpoint, out_dir, precision=precision, batch=batch, unroll=unroll, opset=opset, trt=trt,
                   validate=validate, **kwargs)


__all__ = ["export_model", "read_metadata", "write_metadata", "MetadataError", "METADATA_KEYS",
           "read_engine_header", "read_engine", "check_engine_header", "EngineMismatchError", "TensorRTUnavailable"]
