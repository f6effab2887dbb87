"""Export a checkpoint to `generator.onnx` and `step.onnx` (and optionally TensorRT engines), then validate.

Exporter: torch.onnx's dynamo exporter (`torch.export` + onnxscript, with its graph optimizer), opset 18.
It gives a clean graph (initializers for every weight, no Constant/Cast/Identity clutter, one set of
initializers shared by all unrolled steps), it is torch's supported path (the TorchScript exporter is
deprecated), and opset 18 is its native opset, which ONNX Runtime >= 1.14 and TensorRT >= 8.6 read.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..engine.backends.exported import (ENCODER_VALIDATION_FILE, GENERATOR_FILE, GENERATOR_INPUT,  # noqa: F401
                                        GENERATOR_OUTPUT, IO_DOCS, STEP_FILE, STEP_INPUTS, STEP_OUTPUTS,
                                        VALIDATION_FILE, WEIGHTS_KEY)
from .metadata import (CONVENTIONS, DEFAULT_LICENSE, MASK_CONVENTION, RECOMMENDED,  # noqa: F401
                       MetadataError, parse_recommend, read_metadata, write_metadata)
from .validate import example_inputs

PRECISIONS = ("fp32", "fp16", "bf16")
#: what each precision computes in (bf16 stores bf16 weights, computes fp32: see adjoint.PRECISIONS)
COMPUTE = {"fp32": "fp32", "fp16": "fp16", "bf16": "fp32"}
DEFAULT_OPSET = 18
OPSETS = range(18, 24)  # the dynamo exporter's native opset is 18; ONNX Runtime 1.32 reads up to 23


def parse_batch(batch: str | int) -> str | int:
    """'dynamic' or a positive int (also given as a string)."""
    if isinstance(batch, str):
        if batch.strip().lower() == "dynamic":
            return "dynamic"
        try:
            batch = int(batch)
        except ValueError:
            raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be 'dynamic' or a positive integer, got {batch!r}")
    return batch


def check_options(precision: str, batch, unroll: int, opset: int) -> str | int:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
    if opset not in OPSETS:
        raise ValueError(f"opset must be between {OPSETS.start} and {OPSETS.stop - 1} "
                         f"(the dynamo exporter emits opset 18 natively), got {opset}")
    return parse_batch(batch)


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress and warnings; keep them, show them only on failure."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export_graph(module, args: tuple, input_names, output_names, batched: set[str], dynamic: bool, opset: int):
    """torch module -> cleaned onnx.ModelProto (batch axis named 'batch' when dynamic)."""
    import torch

    dynamic_shapes = None
    if dynamic:
        bd = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: bd} if n in batched else None for n in input_names)
    with _quiet() as out:
        try:
            prog = torch.onnx.export(module.eval(), args, None, input_names=list(input_names),
                                     output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                                     opset_version=opset, dynamo=True, optimize=True, external_data=False)
        except Exception as e:
            log = out.getvalue().strip()
            raise RuntimeError(f"ONNX export failed: {type(e).__name__}: {e}" + (f"\n{log}" if log else "")) from e
    model = prog.model_proto
    _clean(model, dynamic)
    return model


def _clean(model, dynamic: bool) -> None:
    """Drop per-node debug metadata (stack traces, local paths), name the batch axis 'batch'."""
    g = model.graph
    for n in g.node:
        del n.metadata_props[:]
        n.doc_string = ""
    g.doc_string = ""
    if not dynamic:
        return
    first = g.input[0].type.tensor_type.shape.dim[0]
    sym = first.dim_param
    if not sym:
        raise RuntimeError("the exporter fixed the batch axis; expected a dynamic one")
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == sym:
                d.dim_param = "batch"


def _document(model, kind: str) -> None:
    """Each graph input's and output's doc_string: what it is (engine/backends/exported.IO_DOCS, the contract)."""
    docs = IO_DOCS[kind]
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.doc_string = docs[vi.name]


def _relax_w_channels(model) -> None:
    """w may be [B, 1, H, W] (one mask for all channels) or [B, C, H, W]: it only enters element-wise
    products (w * (x - y), w * sign(...)), which broadcast, so its channel axis is symbolic."""
    for vi in model.graph.input:
        if vi.name == "w":
            d = vi.type.tensor_type.shape.dim[1]
            d.Clear()
            d.dim_param = "w_channels"


def _metadata(cfg, kind: str, precision: str, unroll: int, batch, opset: int, about: dict | None = None) -> dict[str, Any]:
    """A graph's metadata. `about`: what export_model adds for the whole export (weights_id, defaults,
    description, license, date); without it (a graph exported on its own) the recommended defaults."""
    import torch

    return {
        "gcomp_version": __version__,
        "gcomp_kind": kind,
        "size": cfg.size,
        "channels": cfg.channels,
        "zdim": cfg.zdim,
        "precision": precision,
        "unroll": unroll,
        "batch": batch,
        "defaults": dict(RECOMMENDED),
        "config_hash": cfg.hash(),
        "model_config": asdict(cfg),
        "mask_convention": MASK_CONVENTION,
        "compute_precision": COMPUTE[precision],
        "opset": opset,
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
        **CONVENTIONS,
        **(about or {}),
    }


def fit_to_unroll(defaults: dict, unroll: int) -> list[str]:
    """Round each recommended `iters` (the model-wide one and each mask kind's) up to a multiple of `unroll`, in
    place: a graph of K steps per call runs a multiple of K iterations only, so a model recommending 100 at
    --unroll 3 would refuse its own defaults. Returns a note per value changed."""
    from ..engine.options import PER_MASK

    notes = []
    for where, values in [("", defaults), *((f"{kind}.", v) for kind, v in defaults.get(PER_MASK, {}).items())]:
        n = values.get("iters")
        if unroll > 1 and n and n % unroll:
            values["iters"] = -(-n // unroll) * unroll
            notes.append(f"the recommended {where}iters {n} is {values['iters']} in this export: a multiple of "
                         f"--unroll {unroll}")
    return notes


def about_export(G, D, checkpoint, cfg, recommend=None, description: str | None = None,
                 license: str | None = None) -> dict[str, Any]:
    """The metadata every file of one export shares: the weights' id, the recommended settings, description,
    licence, date (UTC)."""
    import datetime

    from ..train.checkpoint import weights_id

    return {
        WEIGHTS_KEY: weights_id(G, D),
        "defaults": parse_recommend(recommend),
        "description": description or (f"gcomp DCGAN {cfg.size}x{cfg.size}x{cfg.channels}, zdim {cfg.zdim}, "
                                       f"gf {cfg.gf}, df {cfg.df}, exported from {Path(str(checkpoint)).name}"),
        "license": license or DEFAULT_LICENSE,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def export_generator(G, cfg, path: Path, precision: str, batch, opset: int, about: dict | None = None):
    import onnx

    from ..train.adjoint import GeneratorModule

    nb = 2 if batch == "dynamic" else batch
    z = example_inputs(cfg, nb)[0]
    model = _export_graph(GeneratorModule(G, precision), (z,), (GENERATOR_INPUT,), (GENERATOR_OUTPUT,), {GENERATOR_INPUT}, batch == "dynamic", opset)
    model.graph.name = "gcomp_generator"
    _document(model, "generator")
    write_metadata(model, _metadata(cfg, "generator", precision, 1, batch, opset, about))
    onnx.save(model, str(path))
    return path


def export_step(G, D, cfg, path: Path, precision: str, batch, unroll: int, opset: int, about: dict | None = None):
    import onnx

    from ..train.adjoint import StepModule

    nb = 2 if batch == "dynamic" else batch
    args = example_inputs(cfg, nb)
    model = _export_graph(StepModule(G, D, unroll=unroll, precision=precision), args, STEP_INPUTS, STEP_OUTPUTS,
                          {"z", "v", "y", "w"}, batch == "dynamic", opset)
    _relax_w_channels(model)
    model.graph.name = "gcomp_step"
    _document(model, "step")
    write_metadata(model, _metadata(cfg, "step", precision, unroll, batch, opset, about))
    onnx.save(model, str(path))
    return path


STALE = ".stale-{}"  # the suffix (with the old weights id) of an encoder moved aside by a re-export


def set_aside_stale_encoder(out: Path, wid: str, log: Callable[[str], None]) -> Path | None:
    """Move an encoder.onnx trained for another checkpoint (weights id other than `wid`, none, or unreadable) out of
    the way, with its encoder_validation.json, and log one line: the runtime would refuse it beside the new graphs
    (`gcomp complete` stops before any work), and it is a trained encoder, so renamed rather than deleted. An
    encoder of these weights stays (it was trained against this very generator). Returns the new path or None."""
    from ..engine.encoder import ENCODER_FILE

    enc = out / ENCODER_FILE
    if not enc.is_file():
        return None
    try:
        theirs = read_metadata(enc, require=False).get(WEIGHTS_KEY)
    except MetadataError:
        theirs = "unreadable"
    if theirs == wid:
        return None
    aside = enc.with_name(enc.name + STALE.format(theirs))
    enc.replace(aside)
    report = out / ENCODER_VALIDATION_FILE
    if report.is_file():
        report.replace(report.with_name(report.name + STALE.format(theirs)))
    log(f"moved {enc} aside to {aside.name}: it was trained for another checkpoint (weights id {theirs}; this "
        f"export's is {wid}), so the runtime would refuse it; train a new one with gcomp train-encoder")
    return aside


def export_model(checkpoint, out_dir, precision: str = "fp32", batch: str | int = "dynamic", unroll: int = 1,
                 opset: int = DEFAULT_OPSET, trt: bool = False, validate: bool = True,
                 trt_profile: tuple[int, int, int] | None = None, trt_compute_capabilities: list[str] | None = None,
                 log: Callable[[str], None] | None = None, recommend: str | dict | None = None,
                 description: str | None = None, license: str | None = None) -> dict[str, Any]:
    """Export `checkpoint` (a .pt file or a run folder) into `out_dir`.

    Writes generator.onnx and step.onnx (float32 IO for every precision), validates them against the
    PyTorch reference unless validate=False (validation.json, naming the weights id and each file's sha256;
    ValidationError on failure; an earlier export's validation.json in out_dir is removed first, so an unvalidated
    export never carries a stale verdict), and with trt=True builds generator.engine and step.engine. An
    encoder.onnx of another checkpoint in out_dir is moved aside (set_aside_stale_encoder, one line to `log`).
    Returns
    {"files": [{"name", "path", "bytes", "seconds"}...], "paths": {name: path}, "validation": report or None,
     "engines": {name: header}}.
    recommend: the search settings the metadata recommends (`defaults`), as "iters=100,lr=3e-4" or a dict,
    over RECOMMENDED; description, license: free text for the metadata. Every file also carries the hash of
    the checkpoint's weights (`weights_id`), so the runtime refuses graphs from two checkpoints.
    Raises CheckpointError (bad checkpoint), ValueError (bad option), TensorRTUnavailable (trt without TensorRT).
    """
    batch = check_options(precision, batch, unroll, opset)
    parse_recommend(recommend)  # a bad --recommend fails before the slow part
    if trt:
        from .trt import import_tensorrt

        import_tensorrt()  # fail before the slow part when TensorRT is missing
    log = log or (lambda msg: None)
    from ..train.checkpoint import load_models

    cfg, G, D = load_models(checkpoint)
    out = Path(out_dir)
    log(f"gcomp export: {checkpoint} ({cfg.size}x{cfg.size}x{cfg.channels}, zdim {cfg.zdim}, gf {cfg.gf}, df {cfg.df}) "
        f"-> {out} (precision {precision}, batch {batch}, unroll {unroll}, opset {opset})")
    about = about_export(G, D, checkpoint, cfg, recommend, description, license)
    for note in fit_to_unroll(about["defaults"], unroll):
        log(f"note: {note}")
    out.mkdir(parents=True, exist_ok=True)
    # An earlier export's validation.json describes the graphs about to be replaced, and the runtime trusts it (or
    # refuses the export when it says "ok": false): remove it first, so that without validation (or if this export
    # stops half-way) the new graphs count as unvalidated, like a fresh export's; validation writes a new one.
    (out / VALIDATION_FILE).unlink(missing_ok=True)
    # So are an earlier export's TensorRT engines, built from the old graphs (and carrying no weights id the
    # runtime could check): removed too; trt=True builds new ones.
    for name in ("generator.engine", "step.engine"):
        (out / name).unlink(missing_ok=True)
    set_aside_stale_encoder(out, about[WEIGHTS_KEY], log)
    files: list[dict[str, Any]] = []

    def _record(name: str, path: Path, t0: float) -> None:
        size = path.stat().st_size
        if size == 0:
            raise RuntimeError(f"export wrote an empty file: {path}")
        files.append({"name": name, "path": str(path), "bytes": size, "seconds": time.perf_counter() - t0})
        log(f"export success {files[-1]['seconds']:.1f} s, saved as {path} ({size / 1e6:.1f} MB)")

    t0 = time.perf_counter()
    export_generator(G, cfg, out / GENERATOR_FILE, precision, batch, opset, about)
    _record("generator", out / GENERATOR_FILE, t0)
    t0 = time.perf_counter()
    export_step(G, D, cfg, out / STEP_FILE, precision, batch, unroll, opset, about)
    _record("step", out / STEP_FILE, t0)

    report = None
    if validate:
        from .validate import validate_export  # noqa: F811 (validate never imports this module back)

        report = validate_export(out, G, D, cfg, precision=precision, raise_on_failure=True)
    engines: dict[str, Any] = {}
    if trt:
        from .trt import build_engine

        for name, onnx_file in (("generator", GENERATOR_FILE), ("step", STEP_FILE)):
            t0 = time.perf_counter()
            path = out / f"{name}.engine"
            engines[name] = build_engine(out / onnx_file, path, precision, profile=trt_profile,
                                         timing_cache=out / "timing.cache",
                                         compute_capabilities=trt_compute_capabilities)
            _record(f"{name}.engine", path, t0)
    return {"files": files, "paths": {f["name"]: f["path"] for f in files}, "validation": report,
            "engines": engines, "out_dir": str(out)}
