"""The TensorRT engine files gcomp writes, read without torch or TensorRT: the runtime's side of the format.

Layout (Ultralytics' idea, with a magic so foreign files are recognised):

    b"GCOMPTRT" | uint32 little-endian N | N bytes of UTF-8 JSON header | the serialized TensorRT plan

`gcomp export --trt` (export/trt.py) writes it with `pack_engine`; the tensorrt backend reads it with
`read_engine` and refuses, with `check_engine_header`, an engine built by another TensorRT or for another GPU
before TensorRT would fail with a less helpful message. `import_tensorrt` finds TensorRT or TensorRT-RTX.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any

MAGIC = b"GCOMPTRT"
HEADER_FORMAT = "gcomp-trt/1"
INSTALL_HINT = ("{what} needs TensorRT's Python API: install NVIDIA TensorRT (pip install tensorrt, on a machine "
                "with a CUDA GPU) or TensorRT-RTX (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)")


class TensorRTUnavailable(RuntimeError):
    """Neither tensorrt nor tensorrt_rtx_bindings can be imported."""


class EngineMismatchError(RuntimeError):
    """An engine file that this TensorRT or this GPU cannot run, or not a gcomp engine."""


# -- the header (no torch, no tensorrt) --------------------------------------------------------------
def pack_engine(header: dict[str, Any], plan: bytes) -> bytes:
    blob = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(blob)) + blob + bytes(plan)


def _read_header(f, name) -> tuple[dict, int]:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise EngineMismatchError(f"{name}: not a gcomp TensorRT engine (no {MAGIC!r} header; "
                                  f"build engines with `gcomp export --trt`)")
    raw = f.read(4)
    if len(raw) != 4:
        raise EngineMismatchError(f"{name}: truncated engine header")
    (n,) = struct.unpack("<I", raw)
    blob = f.read(n)
    if len(blob) != n:
        raise EngineMismatchError(f"{name}: truncated engine header ({len(blob)} of {n} bytes)")
    try:
        header = json.loads(blob.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineMismatchError(f"{name}: unreadable engine header ({e})") from None
    return header, len(MAGIC) + 4 + n


def read_engine_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a gcomp engine file (reads only the header)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
    return header


def read_engine(path: str | os.PathLike) -> tuple[dict[str, Any], bytes]:
    """(header, serialized plan) of a gcomp engine file."""
    with open(path, "rb") as f:
        header, _ = _read_header(f, path)
        plan = f.read()
    if not plan:
        raise EngineMismatchError(f"{path}: the engine file has a header but no plan")
    return header, plan


def _cc_str(cc) -> str:
    if isinstance(cc, (tuple, list)):
        return f"{cc[0]}.{cc[1]}"
    return str(cc)


def check_engine_header(header: dict[str, Any], builder: str | None = None, trt_version: str | None = None,
                        compute_capability=None) -> None:
    """Refuse an engine this runtime cannot run, with a message saying why and what to do.

    builder: "tensorrt" or "tensorrt_rtx" (the runtime library); trt_version: its __version__;
    compute_capability: the GPU's, as (major, minor) or "8.6". None skips that check.
    """
    if header.get("format") != HEADER_FORMAT:
        raise EngineMismatchError(f"engine header format {header.get('format')!r} is not {HEADER_FORMAT!r}")
    rebuild = "rebuild it here with `gcomp export CHECKPOINT --trt` or use the .onnx files"
    if builder is not None and header.get("builder") != builder:
        raise EngineMismatchError(f"engine built with {header.get('builder')} cannot be loaded by {builder}; {rebuild}")
    if trt_version is not None and header.get("tensorrt_version") != trt_version:
        raise EngineMismatchError(f"engine built with {header.get('builder')} {header.get('tensorrt_version')}, "
                                  f"this runtime is {trt_version}: TensorRT plans are tied to the exact version; {rebuild}")
    if compute_capability is not None:
        cc = _cc_str(compute_capability)
        targets = header.get("compute_capability") or []
        if cc not in targets:
            raise EngineMismatchError(f"engine built for compute capability {', '.join(targets) or '?'}, "
                                      f"this GPU is {cc}; {rebuild}")


def import_tensorrt(what: str = "--trt"):
    """(module, builder name): TensorRT if installed, else TensorRT-RTX; TensorRTUnavailable otherwise (its message
    starts with `what`: the option that needs it)."""
    try:
        import tensorrt as trt  # noqa: F401

        return trt, "tensorrt"
    except ImportError:
        pass
    try:
        import tensorrt_rtx_bindings as trt  # noqa: F401

        return trt, "tensorrt_rtx"
    except ImportError:
        pass
    raise TensorRTUnavailable(INSTALL_HINT.format(what=what))
