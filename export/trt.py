"""TensorRT engines from the exported ONNX graphs, with a gcomp header in front of the plan.

Builders, in order of preference: NVIDIA TensorRT (`import tensorrt`) and TensorRT-RTX
(`pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings`, `import tensorrt_rtx_bindings`; the same
Python API, always strongly typed, and it builds on a machine without a GPU for the compute capabilities
it is told to target).

The engine file format (a gcomp header in front of the plan) is the runtime's: it lives beside the tensorrt
backend in engine/backends/tensorrt_plan.py, which this builder writes with `pack_engine`. The header holds
the builder and its version, the target compute capabilities, the precision, the optimization profile's
shapes and the ONNX file's gcomp metadata.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from ..engine.backends.tensorrt_plan import (HEADER_FORMAT, MAGIC, EngineMismatchError,  # noqa: F401 (re-exported)
                                            TensorRTUnavailable, _cc_str, check_engine_header, import_tensorrt,
                                            pack_engine, read_engine, read_engine_header)

#: default optimization profile over the batch dimension for dynamic-batch graphs: min, opt, max
DEFAULT_PROFILE = (1, 64, 256)


# -- building ---------------------------------------------------------------------------------------
def current_compute_capability() -> str | None:
    """The first CUDA GPU's compute capability as "8.6", or None when none is visible.

    cuda-python first; torch only when the caller already imported it (the runtime never imports torch).
    """
    try:
        from cuda.bindings import runtime as cudart  # cuda-python

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            return f"{props.major}.{props.minor}"
    except Exception:
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return _cc_str(torch.cuda.get_device_capability(0))
    except Exception:
        pass
    return None


def _rtx_targets(trt, wanted: list[str] | None, current: str | None) -> list[tuple[str, Any]]:
    """TensorRT-RTX compute-capability targets as (label, enum)."""
    enum = trt.ComputeCapability
    avail = {}
    for name in dir(enum):
        if name.startswith("SM") and name[2:].isdigit():
            d = name[2:]
            avail[f"{d[:-1]}.{d[-1]}"] = getattr(enum, name)
    if wanted:
        bad = [c for c in wanted if c not in avail]
        if bad:
            raise ValueError(f"TensorRT-RTX cannot target compute capability {bad}; it supports {sorted(avail)}")
        return [(c, avail[c]) for c in wanted]
    if current is not None:
        if current not in avail:
            raise ValueError(f"TensorRT-RTX {trt.__version__} does not support this GPU (compute capability "
                             f"{current}; it supports {sorted(avail, key=float)})")
        return [(current, enum.CURRENT)]
    # No GPU here: every Ampere-or-newer target. Turing (7.5) is left out: TensorRT-RTX 1.7 cannot compile
    # fp32 GEMMs for it ("FP32 GEMM is not supported"); ask for it with compute_capabilities=["7.5"].
    return [(c, avail[c]) for c in sorted(avail, key=float) if float(c) >= 8.0]


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str,
                 profile: tuple[int, int, int] | None = DEFAULT_PROFILE, timing_cache: str | os.PathLike | None = None,
                 compute_capabilities: list[str] | None = None, workspace_mb: int = 2048) -> dict[str, Any]:
    """Build `engine_path` from `onnx_path`. Returns the header written in front of the plan.

    precision: the exported graph's ("fp32"/"fp16" graphs are built strongly typed, so the ONNX types are
    the engine's; "bf16" graphs store bf16 weights and compute fp32, and full TensorRT is allowed to lower
    them to bf16 kernels with BuilderFlag.BF16). profile: (min, opt, max) batch for dynamic-batch graphs.
    timing_cache: a file read if present and written back (TensorRT only; TensorRT-RTX has none).
    """
    from .metadata import read_metadata

    trt, builder_name = import_tensorrt()
    rtx = builder_name == "tensorrt_rtx"
    meta = read_metadata(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = rtx or precision in ("fp32", "fp16")
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RuntimeError(f"{builder_name} could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strongly_typed and precision == "bf16" and hasattr(trt.BuilderFlag, "BF16"):
        config.set_flag(trt.BuilderFlag.BF16)

    current = current_compute_capability()
    if rtx:
        targets = _rtx_targets(trt, compute_capabilities, current)
        config.num_compute_capabilities = len(targets)
        for i, (_, cc) in enumerate(targets):
            config.set_compute_capability(cc, i)
        cc_labels = [c for c, _ in targets]
    else:
        if current is None:
            raise RuntimeError("TensorRT builds engines for the GPU it runs on, and none is visible here")
        cc_labels = [current]

    shapes: dict[str, dict[str, list[int]]] = {}
    prof = builder.create_optimization_profile()
    channels = meta["channels"]
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        if -1 not in dims:
            shapes[t.name] = {"min": dims, "opt": dims, "max": dims}
            continue
        lo, mid, hi = list(dims), list(dims), list(dims)
        if dims[0] == -1:
            b = profile or DEFAULT_PROFILE
            lo[0], mid[0], hi[0] = b
        if len(dims) > 1 and dims[1] == -1:  # w's channel dim: 1 (one mask for all channels) or C
            lo[1], mid[1], hi[1] = 1, 1, channels
        prof.set_shape(t.name, lo, mid, hi)
        shapes[t.name] = {"min": lo, "opt": mid, "max": hi}
    config.add_optimization_profile(prof)

    cache_used = None
    if timing_cache is not None and not rtx:
        tc_path = Path(timing_cache)
        blob = tc_path.read_bytes() if tc_path.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
        cache_used = str(tc_path)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise RuntimeError(f"{builder_name} failed to build an engine from {onnx_path} (see the log above)")
    if cache_used is not None:
        Path(cache_used).write_bytes(bytes(config.get_timing_cache().serialize()))

    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    header = {
        "format": HEADER_FORMAT,
        "builder": builder_name,
        "tensorrt_version": trt.__version__,
        "compute_capability": cc_labels,
        "precision": precision,
        "strongly_typed": bool(strongly_typed),
        "shapes": shapes,
        "outputs": outputs,
        "metadata": meta,
        "onnx_file": Path(onnx_path).name,
        "timing_cache": Path(cache_used).name if cache_used else None,
        "build_seconds": round(seconds, 3),
    }
    Path(engine_path).write_bytes(pack_engine(header, plan))
    return header


def try_deserialize(engine_path: str | os.PathLike) -> tuple[bool, str]:
    """(ok, message): whether this machine's TensorRT runtime can load the engine (needs a supported GPU)."""
    trt, builder_name = import_tensorrt()
    header, plan = read_engine(engine_path)
    check_engine_header(header, builder=builder_name, trt_version=trt.__version__)
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    try:
        engine = runtime.deserialize_cuda_engine(plan)
    except Exception as e:  # pragma: no cover - depends on the driver
        return False, f"{type(e).__name__}: {e}"
    if engine is None:
        return False, "the runtime returned no engine (no usable CUDA GPU / driver here?)"
    return True, f"{engine.num_io_tensors} IO tensors"
