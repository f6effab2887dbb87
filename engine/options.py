"""A completion job's settings besides the model: the mask, the search, restarts, blending, seeding."""
from __future__ import annotations

import numbers
import types
import typing
from dataclasses import dataclass, field, fields, replace

from .blend import Blend, parse_blend, resolve_blend
from .faces import FACE_MODES
from .masks import mask_kind
from .search import SearchParams

#: the key of a model's metadata `defaults` that holds its per-mask-kind recommendations:
#: {"masks": {"center": {"blend": "poisson:0.75"}, "left": {...}}}; kinds as engine.masks.KINDS ("half" is "left")
PER_MASK = "masks"


@dataclass(frozen=True)
class CompleteOptions:
    mask: str = "center"
    search: SearchParams = field(default_factory=SearchParams)
    batch_size: int = 64
    restarts: int = 1
    blend: str = "auto"  # auto: the model's recommendation for the mask kind, else engine/blend.py's AUTO
    seed: int = 0
    overwrite: bool = False
    save_progress: bool = False
    shard: tuple[int, int] = (0, 1)  # (k, n): this process does the k-th of n parts
    io_threads: int = 4  # decode / encode threads (--io-threads); Ray actors are complete_ray(workers=)
    face: str = "auto"  # auto: photos larger than the model are cropped around the face found in them
    init: str = "auto"  # starting latent: auto (the model's encoder if it has one), encoder, random

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size (--batch-size) must be >= 1, got {self.batch_size}")
        if self.restarts < 1:
            raise ValueError(f"restarts (--restarts) must be >= 1, got {self.restarts}")
        if self.io_threads < 1:
            raise ValueError(f"io_threads (--io-threads) must be >= 1, got {self.io_threads}")
        parse_blend(self.blend)  # ValueError naming what it takes
        if self.face not in FACE_MODES:
            raise ValueError(f"face must be one of {FACE_MODES}, got {self.face!r}")
        try:  # a list (JSON, argparse) is taken as the tuple it means: options are hashable (jobs group by them)
            object.__setattr__(self, "shard", tuple(self.shard))
            k, n = self.shard
        except (TypeError, ValueError):
            raise ValueError(f"shard must be (K, N) with 0 <= K < N, got {self.shard!r}") from None
        if not (n >= 1 and 0 <= k < n):
            raise ValueError(f"shard must be K/N with 0 <= K < N, got {k}/{n}")

    def with_settings(self, **settings) -> "CompleteOptions":
        """These options with some fields replaced; search fields (iters, lr, lam, ...) may be given directly:
        `opts.with_settings(iters=50, blend="poisson")`."""
        search_keys = {f.name for f in fields(SearchParams)}
        own = {k: v for k, v in settings.items() if k not in search_keys}
        search = {k: v for k, v in settings.items() if k in search_keys}
        unknown = set(own) - {f.name for f in fields(CompleteOptions)}
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}")
        hints = {**typing.get_type_hints(CompleteOptions), **typing.get_type_hints(SearchParams)}
        for key, value in settings.items():
            _check_type(key, value, hints[key])
        base = own.pop("search", self.search)
        return replace(self, **own, search=replace(base, **search))


@dataclass(frozen=True)
class Settings(CompleteOptions):
    """CompleteOptions resolved for one model and mask kind (`Model.options`): the search with no None left, the
    blend parsed (a Blend, `auto` replaced by what it stands for), the model, backend and encoder it was resolved
    with, and what was asked. Frozen and hashable (jobs group images by it), picklable (Ray actors get it)."""

    asked: CompleteOptions = field(default_factory=CompleteOptions, compare=False)  # before resolution
    model: str = ""  # the model's source path
    backend: str = ""  # the backend's name
    device: str = "cpu"
    backend_settings: dict = field(default_factory=dict, compare=False, hash=False)  # Backend.settings()
    encoder: str | None = None  # the encoder that gives the starting latents (init resolved), or None

    def __post_init__(self):
        super().__post_init__()
        if not self.search.is_resolved:
            raise ValueError(f"Settings need a resolved search (Settings.resolve), got {self.search}")
        if not isinstance(self.blend, Blend):
            raise ValueError(f"Settings need a parsed blend (Settings.resolve), got {self.blend!r}")

    @classmethod
    def resolve(cls, asked: CompleteOptions, recommended: dict | None = None, **about) -> "Settings":
        """`asked` with what it leaves unset filled from `recommended` (a model's recommendation for the mask
        kind, `recommended_for`), then the seed's search and blend.AUTO. about: model, backend, device,
        backend_settings, encoder."""
        if isinstance(asked, Settings):
            asked = asked.asked
        rec = recommended or {}
        own = {f.name: getattr(asked, f.name) for f in fields(CompleteOptions)}
        return cls(**own | {"search": asked.search.resolved(rec), "blend": resolve_blend(asked.blend, rec.get("blend"))},
                   asked=asked, **about)

    @property
    def searches(self) -> bool:
        """The job runs the search (iterations, or restarts to choose between): only then are the context loss's
        weights used (prepare computes them only then)."""
        return self.search.iters > 0 or self.restarts > 1

    @property
    def blend_asked(self) -> str:
        return self.asked.blend

    def with_settings(self, **settings) -> "CompleteOptions":
        """What was asked with some settings replaced (unresolved: resolve it again against the model)."""
        return self.asked.with_settings(**settings)


def _check_type(key: str, value, hint) -> None:
    """A setting of the wrong type, refused in words: the dataclasses' range checks would otherwise fail on it
    with Python's (lr="abc": "must be real number, not str")."""
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in kinds:
        return
    if int in kinds and float not in kinds:
        ok, want = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
    elif float in kinds:
        ok, want = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
    elif str in kinds:
        ok, want = isinstance(value, str), "a string"
    else:
        return  # flags, the search object, shard tuples: taken as given
    if not ok:
        raise ValueError(f"setting {key} must be {want}, got {value!r}")


def recommended_for(defaults: dict | None, mask: str | None) -> dict:
    """A model's recommended settings (its metadata `defaults`) for one mask: the model-wide values with that mask
    kind's own (defaults["masks"][kind]) laid over them. A mask file, folder or array gets the model-wide values.
    Search keys as engine.search.RECOMMENDABLE, and "blend" (what `--blend auto` stands for)."""
    d = {k: v for k, v in (defaults or {}).items() if k != PER_MASK}
    kind = mask_kind(mask)
    per = (defaults or {}).get(PER_MASK) or {}
    return {**d, **(per.get(kind) or {})} if kind is not None and isinstance(per, dict) else d
