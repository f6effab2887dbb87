"""gcomp's public Python API: open a model once, complete numpy arrays and files with it.

    import gcomp
    with gcomp.open_model() as model:                       # the bundled face model, ONNX Runtime, CPU
        out = model.complete(rgb, "center")                 # HxWx3 uint8 RGB in, the same out
        summary = model.complete_files("faces/", "out/")    # what `gcomp complete faces/ out/` runs

`gcomp complete`, `gcomp eval`, the Ray driver and the benchmarks all run through it. Opening a model
activates its backend once and reads the model's recommended search settings (its metadata `defaults`)
once: every completion fills the settings it is not given from those, then from the seed's.
Masks: a kind ("center", "random:0.5", ... see gcomp.engine.masks.KINDS), or an HxW array whose nonzero
(True, white) pixels are the hole to fill, as in mask files (white = fill).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import images
from .backends import Backend, BackendError, open_backend
from .batch import complete_batch
from .encoder import Encoder, load_encoder
from .jobs import Item, Summary
from .masks import MaskError, MaskSpec, mask_kind
from .options import CompleteOptions, Settings, recommended_for
from .prepare import Prepared, prepare_image
from .search import SearchParams

MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = MODELS / "default"
#: the models that ship inside the package, by the name --model takes (a path of that name wins)
BUNDLED = ("default", "small")
Mask = str | np.ndarray


def default_model() -> Path:
    """The model that ships inside the package (ONNX, runs without torch)."""
    if not (DEFAULT_MODEL / "step.onnx").is_file():
        raise BackendError(f"no --model given and the bundled model is missing from {DEFAULT_MODEL}: "
                           "train one with `gcomp train DATA --out RUN` and pass --model RUN")
    return DEFAULT_MODEL


def model_path(model: str | os.PathLike | None) -> Path:
    """What --model names: None is the default model; a bundled model's name (BUNDLED: "default", "small") is
    that model unless a file or folder of that name exists here; anything else is a path."""
    if model is None:
        return default_model()
    p = Path(model)
    if not p.exists() and str(model) in BUNDLED and (MODELS / str(model) / "step.onnx").is_file():
        return MODELS / str(model)
    return p


def open_model(model: str | os.PathLike | None = None, *, backend: str = "auto", device: str = "cpu",
               precision: str | None = None, threads: int | None = None, streams: int | None = None,
               cuda_graph: bool | None = None, allow_unvalidated: bool = False, **backend_options) -> "Model":
    """Open `model` (None: the bundled default; a bundled model's name, BUNDLED; a checkpoint, an export folder, or
    its generator/step file) on
    `backend` (auto: by the model's file type) and `device` (cpu, cuda, cuda:N). Options a backend does not
    take are refused (BackendError); None means the backend's default. An export whose validation failed
    (validation.json "ok": false) is refused unless allow_unvalidated (then a warning is in `notes`), and so
    are graphs or an encoder exported from different checkpoints. Close it with close() or a `with` block."""
    source = model_path(model)
    given = {"precision": precision, "threads": threads, "streams": streams, "cuda_graph": cuda_graph, **backend_options}
    if allow_unvalidated:
        given["allow_unvalidated"] = True
    be = open_backend(source, backend, device, **{k: v for k, v in given.items() if v is not None})
    return Model(be, source, device)


class Model:
    """An open model: its activated backend, its recommended search settings and its encoder."""

    def __init__(self, backend: Backend, source: str | os.PathLike | None = None, device: str = "cpu",
                 owned: bool = True):
        self.backend = backend.activate()
        self.owned = owned  # close() deactivates a backend this Model activated, not one it was handed
        self.source = Path(source) if source is not None else Path(backend.info.source)
        self.device = device
        self.info = backend.info
        #: the model's recommended settings (metadata `defaults`: search settings, blend, per mask kind), read once
        self.recommended = _defaults(backend.info.meta.get("defaults"))
        self._encoders: dict[str, Encoder | None] = {}

    # -- settings --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def notes(self) -> list[str]:
        """Choices the backend made at activation (precision under auto, ...), one line each."""
        return self.backend.notes

    def settings(self, search: SearchParams | None = None, mask: str | None = None) -> SearchParams:
        """`search` with what it leaves as None filled from this model's recommendation for `mask` (a kind; None:
        its model-wide one), then the seed's."""
        return (search or SearchParams()).resolved(recommended_for(self.recommended, mask))

    def options(self, options: CompleteOptions | None = None, **settings) -> Settings:
        """A job's Settings on this model, resolved once: `settings` (CompleteOptions or SearchParams fields)
        applied, then what is left unset (search settings, `blend="auto"`) filled from the model's
        recommendation for options.mask's kind, then from the seed's (search) and blend.AUTO; with the
        backend's settings and the encoder `init` picks. What every completion below runs."""
        opts = _with_settings(options, settings)
        if isinstance(opts.mask, str):
            MaskSpec.parse(opts.mask)  # a bad kind or parameter fails here, as gcomp complete refuses it
        return self._resolve(opts, opts.mask)

    def _resolve(self, opts: CompleteOptions, mask: Mask | None) -> Settings:
        """opts resolved for `mask`: a --mask string or a kind, or None / an array (the model-wide recommendation)."""
        if isinstance(mask, str) and mask != opts.mask:
            opts = replace(opts, mask=mask)  # the mask the settings are for
        rec = recommended_for(self.recommended, mask if isinstance(mask, str) else None)
        enc = self.encoder(opts.init)
        settings = Settings.resolve(opts, rec, model=str(self.source), backend=self.name, device=self.device,
                                    backend_settings=self.backend.settings(), encoder=str(enc.path) if enc else None)
        if settings.searches:
            self.backend.check(settings.search)  # what this backend cannot run is refused before any work
        return settings

    def encoder(self, init: str = "auto") -> Encoder | None:
        """The starting-latent encoder for `init` (auto: the model's encoder.onnx if it has one)."""
        self._check_open()  # a closed model would load an encoder nothing closes
        if init not in self._encoders:
            self._encoders[init] = load_encoder(self.source, self.info, init, self.backend.encoder_openvino)
        return self._encoders[init]

    # -- arrays ----------------------------------------------------------------------------------
    def prepare(self, image: np.ndarray, mask: Mask = "center", *, name: str = "image",
                options: CompleteOptions | None = None) -> Prepared:
        """One HxWx3 uint8 RGB array ready for `complete_prepared`. `name` seeds its random mask and
        latents as a file's relative path does in `gcomp complete`."""
        opts = options or CompleteOptions()
        if not isinstance(name, str):  # it becomes a path and the random masks' seed: Path(5) would say neither
            raise TypeError(f"name must be a string (it seeds the image's random mask), got {type(name).__name__}")
        rgb = _check_rgb(image, name)
        spec = MaskSpec.parse(mask) if isinstance(mask, str) else _known(mask, rgb.shape[:2], name)
        return prepare_image(Item(Path(name), name, Path(name)), images.Image(rgb, rgb), spec, self.size,
                             opts.seed, opts.search.weighted, opts.face, rgb_out=True)

    def complete_prepared(self, batch: list[Prepared], options: CompleteOptions | None = None,
                          on_progress: Callable[[int, np.ndarray], None] | None = None) -> tuple[list[np.ndarray], dict]:
        """The search, best restart, blend and composite for one batch: (images, stats). Settings the options
        leave unset come from the model's recommendation for the mask kind the batch was prepared with (each
        Prepared's `kind`; a mask file or array: the model-wide one). A batch whose kinds the model recommends
        different settings for is refused: it cannot be one search (complete_many groups them)."""
        self._check_open()
        kinds = {p.kind for p in batch} or {None}
        if isinstance(options, Settings):  # resolved already (a driver's, once per job): for one mask kind
            if kinds != {mask_kind(options.mask)}:
                raise ValueError(f"these settings were resolved for the mask {options.mask!r}, this batch was prepared "
                                 f"with {', '.join(sorted(map(str, kinds)))}: resolve them for it, model.options(mask=...)")
            opts = options
        else:
            resolved = {self._resolve(options or CompleteOptions(), k) for k in kinds}
            if len(resolved) > 1:
                raise ValueError(f"this batch mixes mask kinds ({', '.join(sorted(map(str, kinds)))}) the model "
                                 "recommends different settings for: complete them in separate batches, or with "
                                 "complete_many")
            opts = resolved.pop()
        return complete_batch(self.backend, batch, opts, on_progress, self.encoder(opts.init))

    def complete(self, image: np.ndarray, mask: Mask = "center", *, name: str = "image",
                 options: CompleteOptions | None = None, **settings) -> np.ndarray:
        """Complete one HxWx3 uint8 RGB image; returns the completed HxWx3 uint8 RGB image (known pixels
        untouched). settings: CompleteOptions / SearchParams fields, e.g. iters=50, blend="poisson"."""
        return self.complete_many([image], [mask], names=[name], options=options, **settings)[0]

    def complete_many(self, images_: Sequence[np.ndarray], masks: Mask | Sequence[Mask] = "center", *,
                      names: Sequence[str] | None = None, options: CompleteOptions | None = None,
                      **settings) -> list[np.ndarray]:
        """Complete a list of RGB images, searched in batches of options.batch_size: one mask for all or
        one per image; names default to "000000", "000001", ..."""
        self._check_open()  # before any image is prepared
        opts = self.options(options, **settings)
        listed = isinstance(images_, np.ndarray) and images_.ndim == 4 or (
            isinstance(images_, Sequence) and not isinstance(images_, (str, bytes)))
        if not listed:  # one image would be iterated row by row, a path letter by letter; None has no len()
            raise ValueError(f"complete_many takes a list of HxWx3 uint8 RGB arrays, got {_what(images_)} "
                             "(one image: complete(); files: complete_files())")
        n = len(images_)
        names = list(names) if names is not None else [f"{i:06d}" for i in range(n)]
        per_image = isinstance(masks, (list, tuple))  # else one mask for all (None is refused as a mask, not len()ed)
        if len(names) != n or (per_image and len(masks) != n):
            raise ValueError(f"{n} images need {n} names and masks")
        mask_of = (lambda i: masks[i]) if per_image else (lambda i: masks)  # noqa: E731
        prepared = [self.prepare(im, mask_of(i), name=names[i], options=opts) for i, im in enumerate(images_)]
        # The model may recommend settings per mask kind: images are searched in groups that share their settings
        # (an image's result does not depend on its batch), in order within each group.
        base = _with_settings(options, settings)
        by_mask: dict[str | None, Settings] = {}  # resolved once per mask string (arrays: None), not per image
        groups: dict[Settings, list[int]] = {}
        for i in range(n):
            m = mask_of(i)
            m = m if isinstance(m, str) else None
            if m not in by_mask:
                by_mask[m] = self._resolve(base, m)
            groups.setdefault(by_mask[m], []).append(i)
        outs: list[np.ndarray | None] = [None] * n
        for gopts, idx in groups.items():
            for lo in range(0, len(idx), gopts.batch_size):
                part = idx[lo:lo + gopts.batch_size]
                for i, out in zip(part, complete_batch(self.backend, [prepared[i] for i in part], gopts, None,
                                                       self.encoder(gopts.init))[0]):
                    outs[i] = out
        return outs

    # -- files -----------------------------------------------------------------------------------
    def complete_files(self, input: str | os.PathLike, output: str | os.PathLike,
                       options: CompleteOptions | None = None, *, progress: bool = False,
                       log: Callable[[str], None] | None = None, **settings) -> Summary:
        """Complete an image file or every image under a folder into `output` (what `gcomp complete` runs):
        same relative names and formats, resumable, a gcomp-summary.json (none for one image whose `output` is an
        image path). Refused before any work (nothing created): an output equal to, inside or around the input,
        a bad mask, an unwritable output. Returns the Summary."""
        from .driver import run_files

        self._check_open()
        opts = self.options(options, **settings)
        return run_files(self.backend, self.encoder(opts.init), input, output, opts, notes=self.notes,
                         progress=progress, log=log)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        for enc in self._encoders.values():
            if enc is not None:
                enc.close()
        self._encoders.clear()
        if self.owned:
            self.backend.deactivate()

    def _check_open(self) -> None:
        """A closed model's backend has released its session: say so, rather than fail inside the backend."""
        if not self.backend.is_active:
            raise BackendError(f"{self!r} is closed (its `with` block ended, or close() was called): use it inside "
                               "`with gcomp.open_model(...) as model:`, or open it again")

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({str(self.source)!r}, backend={self.name!r}, size={self.size})"


def complete(input: str | os.PathLike, output: str | os.PathLike, model: str | os.PathLike | None = None, *,
             backend: str | Backend = "auto", device: str = "cpu", options: CompleteOptions | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None,
             backend_options: dict | None = None) -> Summary:
    """`open_model(model, backend=..., device=..., **backend_options).complete_files(input, output, options)`
    in one call. `backend` may also be a Backend instance, which the caller activates and closes."""
    from .jobs import check_job

    opts = options or CompleteOptions()
    check_job(input, output, opts)  # a bad input, mask or output fails before the model loads
    if isinstance(backend, Backend):
        with Model(backend, model, device, owned=False) as m:  # closes its encoder; the backend stays the caller's
            return m.complete_files(input, output, opts, progress=progress, log=log)
    with open_model(model, backend=backend, device=device, **(backend_options or {})) as m:
        return m.complete_files(input, output, opts, progress=progress, log=log)


def _defaults(d) -> dict:
    import json

    return json.loads(d) if isinstance(d, str) else dict(d or {})


def _with_settings(options: CompleteOptions | None, settings: dict) -> CompleteOptions:
    """What was asked: options (a Settings: what it was resolved from) with `settings` applied."""
    opts = options.asked if isinstance(options, Settings) else options or CompleteOptions()
    return opts.with_settings(**settings) if settings else opts


def _what(a) -> str:
    return f"an array {a.dtype} {a.shape}" if isinstance(a, np.ndarray) else "None" if a is None else type(a).__name__


def _check_rgb(image, name: str = "image") -> np.ndarray:
    """An HxWx3 uint8 RGB array, else one ValueError saying what was given and how to convert it."""
    a = np.asarray(image) if isinstance(image, (np.ndarray, list, tuple)) else None
    if a is None or a.dtype == object:
        raise ValueError(f"{name}: expected an HxWx3 uint8 RGB array, got {_what(image)}")
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name}: expected an HxWx3 uint8 RGB array, got {a.dtype} {a.shape}{_hint(a)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: an empty image ({a.shape[0]}x{a.shape[1]}): nothing to complete")
    return a


def _hint(a: np.ndarray) -> str:
    """How to make the HxWx3 uint8 RGB the API takes from what people often have (files of any depth or layout
    go through complete_files, which keeps them)."""
    if a.dtype == np.uint16:
        how = "16-bit: (a // 257).astype(np.uint8)"
    elif a.dtype.kind == "f":
        how = "floats in [0, 1]: (a * 255).round().astype(np.uint8)"
    elif a.dtype != np.uint8:
        return ""
    elif a.ndim == 2:
        how = "grayscale: np.dstack([a] * 3)"
    elif a.ndim == 3 and a.shape[2] == 4:
        how = "RGBA: a[:, :, :3]"
    else:
        return ""
    return f" ({how}; files of any depth or layout: complete_files)"


def _known(mask, shape: tuple[int, int], name: str = "image") -> np.ndarray:
    """A hole mask array (nonzero = fill) -> 1 = known, the convention inside gcomp."""
    m = np.asarray(mask) if isinstance(mask, (np.ndarray, list, tuple)) else None
    if m is None or m.dtype == object:
        raise MaskError(f"{name}: the mask must be a kind (\"center\", \"random:0.5\", ... see Masks) or an HxW array "
                        f"whose nonzero pixels are the hole, got {_what(mask)}")
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.shape != tuple(shape):
        raise MaskError(f"{name}: the mask is {m.shape}, the image {tuple(shape)}: they must be the same size")
    return (m == 0).astype(np.float32)
