"""Blending G's fill into the known pixels: Poisson (guided interpolation, Perez et al. 2003) or none.

No blend ever reads the input's hole: real inputs carry unwanted content there (a logo, a scratch, a
face to remove), and a result that depends on it is wrong. OpenCV's seamlessClone with the input as its
destination does read it (NORMAL_CLONE takes the destination's gradients next to the mask: measured on
held-out faces, 26.8 dB with the true face left in the hole, 17.0 with noise, 10.8 with black), so the
Poisson blend here solves its own system:

    for each hole pixel p and each neighbour q inside the image:  sum_q (f_p - f_q) = sum_q (g_p - g_q),
    with f_q = the input's pixel wherever q is known (Dirichlet),

where g is G's fill. Neighbours outside the image are simply absent (a Neumann border), so a hole that
touches the image border (the left-half mask) keeps G's gradients there instead of being pinned to a
made-up border value; seamlessClone's reflected padding did that and lost 2 dB on half masks
(benchmarks/results/quality.md). The sparse system has one unknown per hole pixel and is factorised once
per mask shape (scipy's SuperLU), except a rectangular hole (a mask kind's center or half, a face crop's hole),
which is solved in its Laplacian's eigenbasis with no factorisation (_Rect: SuperLU's values to ~1e-11 at
32 x 32, ~1e-9 at 512 x 512; the same bytes but where a value lies at a half-level, see _solve); holes larger
than EXACT_MAX pixels are solved with OpenCV's
seamlessClone on a destination whose hole was first filled from known pixels only (Telea), which is also
leak-free but pins a hole touching the border.

`poisson:A` scales G's gradients by A in [0, 1]. The system is linear, so that is A x (the Poisson blend) +
(1 - A) x (the harmonic fill: zero gradients, the smoothest surface through the hole's known border), up
to rounding and clipping to 0..255: a shrinkage of G's noisy detail toward the smooth fill. `poisson` = `poisson:1` (Perez et al.'s), `poisson:0`
ignores G altogether (the harmonic baseline `gcomp eval` reports). With the bundled model A = 0.5 scored
best over the four mask kinds on val.tar (benchmarks/results/quality.md), so `auto` is `poisson:0.5` unless
the model recommends otherwise: how much of G's detail to keep depends on how good G is, so a model's metadata
may recommend its own weight, per mask kind (`resolve_blend`, engine/options.py's `recommended_for`).
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import cv2
import numpy as np

BLENDS = ("auto", "none", "poisson")  # poisson also as poisson:A, A in [0, 1] (the gradients' weight)
#: what `auto` picks for a model that recommends no blend (measured on val.tar with the gf = 32 model,
#: benchmarks/results/quality.md: Poisson raised whole-image PSNR and SSIM for every mask kind, and half of G's
#: gradients more than all of them). A model's metadata `defaults.blend` (and per mask kind) overrides it.
AUTO = "poisson:0.5"
EXACT_MAX = 512 * 512  # hole pixels solved exactly; above, the OpenCV solver (see the module's docstring)
#: the most memory one batched solve's arrays take (blend_many); measured per value of the right-hand side
GROUP_BYTES = 32 << 20
_SOLVE_BYTES_PER_VALUE = 40  # float64 right-hand side, solution and the solver's work copies, about 5 of them
#: the longest side of a rectangular hole solved in its eigenbasis: its eigenvectors are side x side float64 (2 MB
#: at 512; a 262,144 x 1 strip would need 550 GB), and the solve's error grows with the side (~1e-11 at 32, ~1e-9 at
#: 512, 7e-9 for a 1024 x 256 band): longer ones are factorised as any other hole
RECT_MAX_SIDE = 512
_TIE = 1e-9  # eigenbasis solutions this close to a half-level are taken as the half (see _solve)
_PAD = 8  # seamlessClone ignores a mask that touches the border: work on a reflected margin
#: known pixels kept around the hole's bounding box (blend works on that region): more than the exact solve (1)
#: and the Telea fill before seamlessClone (its radius, 3) read, and than seamlessClone's reflected margin
_MARGIN = 2 * _PAD


def parse_blend(how: str) -> tuple[str, float]:
    """'auto' | 'none' | 'poisson' | 'poisson:A' -> (kind, the weight A of G's gradients)."""
    if how == "auto":
        how = AUTO
    kind, colon, weight = str(how).partition(":")
    if kind == "none" and not colon:
        return "none", 1.0
    if kind == "poisson":
        try:
            a = 1.0 if not colon else float(weight or "nan")  # "poisson:" names no weight
        except ValueError:
            a = math.nan
        if math.isfinite(a) and 0 <= a <= 1:
            return "poisson", a
        raise ValueError(f"blend poisson:A takes a weight A in [0, 1], got {how!r}")
    raise ValueError(f"blend must be one of {', '.join(BLENDS)} or poisson:A (A in [0, 1]), got {how!r}")


class Blend(str):
    """A blend parsed once: the string is its one spelling (`poisson:0.75`, `none`; what summaries record and
    what compares equal to a plain string), `kind` and `weight` what it means. Jobs resolve theirs before any
    image is read (engine/options.py Settings), so no image parses it again."""

    kind: str
    weight: float

    def __new__(cls, how: str) -> "Blend":
        if isinstance(how, Blend):
            return how
        kind, weight = parse_blend(how)
        self = super().__new__(cls, kind if kind == "none" else f"{kind}:{weight:g}")
        self.kind, self.weight = kind, weight
        return self


def resolve_blend(how: str, recommended: str | None = None) -> Blend:
    """The blend a job runs: `auto` is the model's recommendation (None: AUTO)."""
    return Blend(recommended or AUTO if how == "auto" else how)


def blend_name(how: str) -> str:
    """The blend `how` stands for, spelled one way (`auto` -> `poisson:0.5`): what summaries record."""
    return str(Blend(how))


def blend(rgb: np.ndarray, fill: np.ndarray, known: np.ndarray, how: Blend | str) -> np.ndarray:
    """The fill to composite over the known pixels (HxWx3 uint8, same size as rgb). Reads rgb only where
    known >= 0.5, so the result never depends on what the input holds in its hole."""
    how = Blend(how)  # a Blend as it is; a string parsed here (the Python API's one-off calls)
    kind, weight = how.kind, how.weight
    if kind == "none":
        return fill
    hole = known < 0.5
    n = int(np.count_nonzero(hole))
    if n == 0 or n == hole.size:
        return fill  # nothing to blend into, or no context to blend with
    # Both solvers only look at the hole and a few known pixels around it (exact: the 4 neighbours; OpenCV: the
    # hole's bounding box, after a radius-3 Telea fill), so they run on that region: a small hole in a large photo
    # costs the region's memory, not the photo's (a 4000x4000 photo once took 0.9 GB here for a 345x345 hole).
    r = _region(hole, _MARGIN)
    if n <= EXACT_MAX:  # the exact solve, one image
        system, solved = _solve_group(rgb[r][None], fill[r][None], hole[r], weight)
        return _pasted(fill, r, system, None if system is None else solved[0])
    out = fill.copy()
    out[r] = _seamless_blend(rgb[r], fill[r], hole[r], weight)
    return out


def blend_many(rgbs: list[np.ndarray], fills: list[np.ndarray], knowns: list[np.ndarray],
               how: Blend | str) -> list[np.ndarray]:
    """blend() for a batch, the same results: images whose holes are identical (a folder under one mask kind, at one
    size) share one factorisation and one multi-right-hand-side solve, their channels side by side."""
    how = Blend(how)
    if how.kind == "none":
        return list(fills)
    outs: list[np.ndarray | None] = [None] * len(fills)
    groups, rest = _groups(knowns, [rgb.shape[2:] == fill.shape[2:] for rgb, fill in zip(rgbs, fills)])
    for i in rest:
        outs[i] = blend(rgbs[i], fills[i], knowns[i], how)  # nothing to blend, or the large-hole solver
    for hole, r, chunk in groups:
        system, solved = _solve_group(np.stack([rgbs[i][r] for i in chunk]), np.stack([fills[i][r] for i in chunk]),
                                      hole[r], how.weight)
        for j, i in enumerate(chunk):
            outs[i] = _pasted(fills[i], r, system, None if system is None else solved[j])
    return outs


def blend_stacked(rgb: np.ndarray, fill: np.ndarray, knowns: list[np.ndarray], how: Blend | str) -> np.ndarray:
    """blend_many for images of one size stacked as [N, H, W, C] arrays, the same results in one new array: each
    group's pixels gathered and its solution put back in one indexing step for all its images, not one per image
    (a batch of 64 faces: ~0.1 ms less per face)."""
    how = Blend(how)
    if how.kind == "none":
        return fill
    out = fill.copy()
    groups, rest = _groups(knowns)
    for i in rest:
        out[i] = blend(rgb[i], fill[i], knowns[i], how)
    for hole, r, chunk in groups:
        rows = rows_of(chunk)
        system, solved = _solve_group(rgb[rows, r[0], r[1]], fill[rows, r[0], r[1]], hole[r], how.weight)
        if system is not None:
            out[rows, system.ys + r[0].start, system.xs + r[1].start] = solved
    return out


def rows_of(idx: list[int]) -> slice | np.ndarray:
    """Images `idx` of a stacked batch as an index of its first axis: a slice where they are a run (a whole batch
    under one mask: views, not copies), else a column of indices ([k, 1]: it pairs with the pixels' indices)."""
    if idx[-1] - idx[0] + 1 == len(idx):
        return slice(idx[0], idx[-1] + 1)
    return np.asarray(idx)[:, None]


def _groups(knowns: list[np.ndarray], ok: list[bool] | None = None):
    """The images the exact solve takes, grouped by identical hole: [(hole, its region, indices)], each group in
    chunks whose solve stays within GROUP_BYTES; and the rest (no hole, no known pixel, too large a hole, or not
    `ok`), which blend() takes one by one. A mask shared by several images (the same array) is looked at once."""
    found: dict[tuple, tuple[np.ndarray, list[int]]] = {}
    rest, seen = [], {}
    for i, known in enumerate(knowns):
        if ok is not None and not ok[i]:
            rest.append(i)
            continue
        key = seen.get(id(known))
        if key is None:
            hole = known < 0.5
            n = int(np.count_nonzero(hole))
            key = (hole.shape, np.packbits(hole).tobytes()) if 0 < n <= EXACT_MAX and n < hole.size else ()
            seen[id(known)] = key
            if key:
                found.setdefault(key, (hole, []))
        if key:
            found[key][1].append(i)
        else:
            rest.append(i)
    groups = []
    for hole, same in found.values():
        # a solve's float64 arrays grow with the images it takes: in chunks whose arrays stay within GROUP_BYTES
        # (all of a batch of small faces at once, large photos' large holes one at a time)
        per_image = int(np.count_nonzero(hole)) * 3 * _SOLVE_BYTES_PER_VALUE  # G's fills are RGB
        step = max(1, GROUP_BYTES // per_image)
        r = _region(hole, _MARGIN)
        groups += [(hole, r, same[start:start + step]) for start in range(0, len(same), step)]
    return groups, rest


def _solve_group(rgb_r: np.ndarray, fill_r: np.ndarray, hole_r: np.ndarray, weight: float):
    """One solve for images sharing a hole: their regions stacked [N, h, w, C] (the input's, G's) and the hole in
    the region. Returns the system and each image's hole pixels [N, n, C] (uint8), or (None, None) where the hole
    has no known neighbour. Only the pixels the system reads are gathered (the hole and its neighbours), the
    images' channels side by side (image-major columns)."""
    system = _system(hole_r.shape, np.packbits(hole_r).tobytes())
    if system is None:
        return None, None
    n, c = len(rgb_r), rgb_r.shape[-1]
    g = fill_r.reshape(n, -1, c)[:, system.read].transpose(1, 0, 2).reshape(len(system.read), -1)
    k = rgb_r.reshape(n, -1, c)[:, system.known].transpose(1, 0, 2).reshape(len(system.known), -1)
    return system, _solve(system, g, k, weight).reshape(len(system.ys), n, c).transpose(1, 0, 2)


def _pasted(fill: np.ndarray, r: tuple[slice, slice], system, solved: np.ndarray | None) -> np.ndarray:
    """A copy of `fill` with the solved hole pixels put in (a plain copy where nothing was solved)."""
    out = fill.copy()
    if system is not None:
        out[r][system.ys, system.xs] = solved
    return out


def _region(hole: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The hole's bounding box grown by `margin` pixels, inside the image."""
    rows, cols = np.flatnonzero(hole.any(axis=1)), np.flatnonzero(hole.any(axis=0))
    h, w = hole.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, h)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, w)))


def _seamless_blend(rgb: np.ndarray, fill: np.ndarray, hole: np.ndarray, weight: float) -> np.ndarray:
    # linearity: A x (G's Poisson blend) + (1 - A) x (the blend of a flat source, the harmonic fill)
    parts = [(w, _seamless_clone(rgb, src, hole)) for w, src in ((weight, fill), (1 - weight, np.full_like(fill, 128)))
             if w > 0]
    if len(parts) == 1:
        return parts[0][1]
    (wa, a), (wb, b) = parts
    out = np.empty_like(a)
    for i in range(0, len(a), 256):  # in blocks of rows: no float64 copy of the whole region
        rows = slice(i, i + 256)
        out[rows] = np.clip(np.rint(wa * a[rows].astype(np.float64) + wb * b[rows].astype(np.float64)), 0, 255)
    return out


def _solve(system: "_System", g: np.ndarray, k: np.ndarray, weight: float) -> np.ndarray:
    """The hole's pixels [n, K] (uint8) for G's values at system.read and the input's at system.known ([., K]
    uint8, one column per channel and image). Only the input's known pixels are read: the hole is never read.
    G's values enter only through their differences (the Laplacian), weighted; for 8-bit values and the weights
    used (dyadic: 1, 0.75, 0.625, 0.5) every sum here is exact in float64."""
    b = weight * (system.lap @ g.astype(np.float64)) + system.border @ k.astype(np.float64)
    with _one_blas_thread():
        if system.lu is not None:
            x = system.lu.solve(b)
        else:
            x = system.rect.solve(b)
            # A value exactly halfway between two levels (a one-pixel hole whose neighbours sum to an odd number, a
            # hole symmetric between two flat levels) is exact in SuperLU's solve of a one-pixel hole and rounds to
            # even; the eigenbasis leaves it ~1e-12 off, to either side: taken as the half, it rounds as SuperLU's
            # did. In larger holes SuperLU too lands a hair to either side of such a value, so there the two solvers
            # can round it one level apart: none of the 9,250 faces (center, half) or 120 photos measured did.
            half = np.floor(x) + 0.5
            x = np.where(np.abs(x - half) < _TIE, half, x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController  # after scipy's import: it sees scipy's OpenBLAS too

    return ThreadpoolController()


_blas_lock = threading.RLock()  # reentrant: a solve inside a caller's own _one_blas_thread


@contextmanager
def _one_blas_thread():
    """SuperLU's solve (and a rectangle's matrix products) call BLAS; OpenBLAS's threads split these small solves
    no faster (measured 9.4 against 7.9 ms for a 32x32 hole, 192 right-hand sides) and then spin for a while,
    taking the cores from the networks and the I/O threads that run beside the blend (2-core Xeon: ~7 s of CPU in
    a 15 s job). The limit is process-wide and OpenBLAS's count did not come back when limits overlapped across
    threads (8 threads blending: left at 1 for the rest of the process), so the limited sections take turns: each
    sets and restores the limit in its own thread. The drivers blend from one thread; Python API users blending
    from several threads at once wait here for each other's solves, which run on one BLAS thread anyway."""
    with _blas_lock, _blas_controller().limit(limits=1, user_api="blas"):
        yield


class _Rect(NamedTuple):
    """The Laplacian of a rectangular hole, solved in its eigenbasis instead of by a factorisation.

    On an h x w rectangle the 5-point Laplacian with Dirichlet values at known neighbours and Neumann edges at the
    image border is T_rows (x) I + I (x) T_cols, each T the 1-D operator of its axis: tridiag(-1, 2, -1) with a 1
    on the diagonal at an end that lies on the image border. With T = Q diag(lam) Q^T per axis (eigh, once per
    shape), a solve is Q_r [(Q_r^T B Q_c) / (lam_r + lam_c)] Q_c^T: four small matrix products per right-hand side
    block, no factorisation. A 32 x 32 hole, 64 faces x 3 channels: 3.8 against 9.2 ms for SuperLU's solve (AVX2
    EPYC, one thread); a large photo's face-crop hole, whose shape is its own, skips the factorisation (100 x 100:
    34 ms). SuperLU's values to ~1e-11 at 32 x 32 and ~1e-9 at 512 x 512 (the error grows with 1 / the smallest
    eigenvalue), ties at half-levels as in _solve."""
    q_rows: np.ndarray  # [h, h] eigenvectors of T_rows
    q_cols: np.ndarray  # [w, w]
    lam: np.ndarray  # [w, h, 1]: lam_cols[j] + lam_rows[i], all > 0 (columns first: the layout solve divides in)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """b: [h * w, K] in raster order -> the solution, same layout. Each product is one matrix product over
        the whole block (a column-major copy between the two axes: 3.8 against 5.4 ms for a batched product per
        row, 32 x 32 hole, K = 192, one thread)."""
        qr, qc = self.q_rows, self.q_cols
        h, w = len(qr), len(qc)
        x = (qr.T @ b.reshape(h, -1)).reshape(h, w, -1).transpose(1, 0, 2).reshape(w, -1)  # rows, then [w, h, K]
        x = (qc.T @ x).reshape(w, h, -1) / self.lam  # columns, then the inverse of the diagonal
        x = (qc @ x.reshape(w, -1)).reshape(w, h, -1).transpose(1, 0, 2).reshape(h, -1)
        return (qr @ x).reshape(h * w, -1)


def _axis_eigen(n: int, first_on_border: bool, last_on_border: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of one axis's 1-D Laplacian (see _Rect)."""
    t = 2 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    t[0, 0] -= first_on_border
    t[-1, -1] -= last_on_border
    return np.linalg.eigh(t)


def _rect(hole: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> _Rect | None:
    """The hole as a _Rect when it is a full axis-aligned rectangle (pixels in raster order), else None. The hole has
    a known neighbour (_system checked), so no axis pair is Neumann at all four ends and every lam is > 0."""
    H, W = hole.shape
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs.min()), int(xs.max()) + 1
    if len(ys) != (y1 - y0) * (x1 - x0) or not hole[y0:y1, x0:x1].all() or max(y1 - y0, x1 - x0) > RECT_MAX_SIDE:
        return None
    lam_r, q_r = _axis_eigen(y1 - y0, y0 == 0, y1 == H)
    lam_c, q_c = _axis_eigen(x1 - x0, x0 == 0, x1 == W)
    return _Rect(q_r, q_c, lam_c[:, None, None] + lam_r[None, :, None])


class _System(NamedTuple):
    lu: object  # SuperLU of the hole's Laplacian (None: a rectangle, solved by `rect`)
    ys: np.ndarray  # the hole's pixels (rows, columns)
    xs: np.ndarray
    read: np.ndarray  # flat indices of the pixels G's values are read at: the hole and its neighbours
    lap: object  # [n, len(read)] sparse: G's 4-neighbour Laplacian at the hole (the image's border: Neumann)
    known: np.ndarray  # flat indices of the known pixels next to the hole
    border: object  # [n, len(known)] sparse: each hole pixel's known neighbours (Dirichlet)
    rect: _Rect | None = None  # a rectangular hole's solver in its eigenbasis (then lu is None)


@lru_cache(maxsize=64)  # a folder's images mostly share one mask: factorise it once
def _system(shape: tuple[int, int], packed: bytes) -> _System | None:
    """SuperLU of the hole's 4-neighbour Laplacian (Dirichlet at known neighbours, Neumann at the image
    border), the hole's pixel coordinates and the two sparse maps from pixels to the right-hand side (G's
    Laplacian, the known border). None when no hole pixel has a known neighbour (singular system)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    H, W = shape
    hole = np.unpackbits(np.frombuffer(packed, np.uint8), count=H * W).reshape(H, W).astype(bool)
    ys, xs = np.nonzero(hole)
    n = len(ys)
    index = np.full((H, W), -1, np.int32)  # n <= EXACT_MAX: int32 is enough, and half of int64's memory
    index[ys, xs] = np.arange(n)
    me = ys * W + xs
    rows, cols, diag = [np.arange(n)], [np.arange(n)], np.zeros(n)
    g_rows, g_cols, k_rows, k_cols = [np.arange(n)], [me], [], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < H) & (qx >= 0) & (qx < W)
        qy, qx = np.clip(qy, 0, H - 1), np.clip(qx, 0, W - 1)
        both = inside & hole[qy, qx]
        qknown = inside & ~hole[qy, qx]
        diag += inside
        rows.append(np.flatnonzero(both))
        cols.append(index[qy[both], qx[both]])
        g_rows.append(np.flatnonzero(inside))
        g_cols.append((qy * W + qx)[inside])
        k_rows.append(np.flatnonzero(qknown))
        k_cols.append((qy * W + qx)[qknown])
    if not sum(len(r) for r in k_rows):
        return None
    # the right-hand side's maps, on the pixels they read (np.unique: sorted flat indices, and each pixel's column)
    read, g_at = np.unique(np.concatenate(g_cols), return_inverse=True)
    known, k_at = np.unique(np.concatenate(k_cols), return_inverse=True)
    g_vals = np.concatenate([diag, -np.ones(len(g_at) - n)])
    lap = sp.csr_matrix((g_vals, (np.concatenate(g_rows), g_at)), shape=(n, len(read)))
    border = sp.csr_matrix((np.ones(len(k_at)), (np.concatenate(k_rows), k_at)), shape=(n, len(known)))
    rect = _rect(hole, ys, xs)
    lu = None
    if rect is None:  # a rectangle needs no matrix: _Rect solves it from its shape
        vals = np.concatenate([diag, -np.ones(sum(len(r) for r in rows[1:]))])
        lu = sla.splu(sp.csc_matrix((vals, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)))
    return _System(lu, ys, xs, read, lap, known, border, rect)


def _seamless_clone(rgb: np.ndarray, fill: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """OpenCV's Poisson solver, made leak-free: its destination's hole is first filled from known pixels only."""
    dst = known_only_inpaint(rgb, hole)
    pad = ((_PAD, _PAD), (_PAD, _PAD), (0, 0))
    m = np.pad(hole.astype(np.uint8) * 255, pad[:2], mode="constant")
    x, y, w, h = cv2.boundingRect(m)
    # seamlessClone places the mask's bounding box centred on `center`; for odd sizes that centre
    # is exact, for even ones OpenCV rounds the same way, so src and dst stay aligned.
    out = cv2.seamlessClone(np.pad(fill, pad, mode="reflect"), np.pad(dst, pad, mode="reflect"), m,
                            (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    return out[_PAD:-_PAD, _PAD:-_PAD]


def known_only_inpaint(rgb: np.ndarray, hole: np.ndarray, radius: int = 3) -> np.ndarray:
    """cv2.inpaint (Telea) that reads known pixels only. cv2.inpaint itself reads hole pixels lying on the
    image border, so the image is padded by 1 px marked as hole, with the hole zeroed."""
    h8 = np.pad(hole.astype(np.uint8) * 255, 1, mode="constant", constant_values=255)
    img = np.pad(np.where(hole[:, :, None], 0, rgb).astype(np.uint8), ((1, 1), (1, 1), (0, 0)))
    return cv2.inpaint(img, h8, radius, cv2.INPAINT_TELEA)[1:-1, 1:-1]
