"""Synthetic plates with exact ground truth: layout, tile-by-tile rendering, tiled BigTIFF output.

A plate is decided in full before a pixel is drawn (:func:`layout_plate`): the dish, every
specimen's and debris particle's sprite recipe, position and exact mask box. Rendering then paints
any region from coordinates alone: the empty plate (:mod:`labpipe.synth.background`), then the
sprites that intersect the region, then lighting and noise. So a plate written tile by tile
(:func:`write_plate`, never holding the full image) is identical, pixel for pixel, to the same plate
rendered whole (:func:`render_plate`), and every truth box equals the mask actually pasted.

Example
-------
>>> spec = PlateSpec(width=1200, height=1200, n_specimens=4, n_touching_pairs=1, n_debris=5,
...                  um_per_px=20.0, seed=3)
>>> image, truth = render_plate(spec)
>>> image.shape, len(truth.specimens)
((1200, 1200, 3), 6)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from labpipe.synth.background import DishGeometry, PlateBackground
from labpipe.synth.specimens import (
    ALPHA_MASK_LEVEL,
    EXTRACTORS,
    Extractor,
    Recipe,
    Sprite,
    build_sprite,
    list_cutout_files,
    load_cutout,
)

__all__ = [
    "BACKGROUNDS",
    "DEBRIS_MAX_UM",
    "CutoutSource",
    "GroundTruthObject",
    "PlateSpec",
    "PlateTruth",
    "layout_plate",
    "object_masks",
    "render_plate",
    "render_region",
    "write_plate",
]

DEBRIS_MAX_UM = 300.0
"""Debris particles and fibres are smaller than this (largest side of the box, micrometres)."""

_SPECIMEN_GAP_UM = 40.0
_DEBRIS_GAP_UM = 25.0
_TRIALS = 400
_ANGLE_RETRIES = 8
_MAX_PHOTOS = {"pinned": 40, "plain": 120, "well": 40}
"""Distinct photos a plate cuts per source (then reused at other sizes and angles): cutting out
pinned beetles and wells is slow, springtail crops are small and quick."""

PROCEDURAL_TAXON = "procedural-beetle"
DEBRIS_TAXON = "debris"
BACKGROUNDS: tuple[str, ...] = ("paper", "dark")


@dataclass(frozen=True)
class CutoutSource:
    """A folder of photographs of one taxon, cut out to paste onto plates.

    Attributes
    ----------
    folder:
        Photographs, one animal each (``.png``, ``.jpg``, ``.tif``; taken in name order, then
        shuffled by the plate's seed).
    taxon:
        Written into each specimen's truth and COCO attributes (``"carabid"``, ``"springtail"``).
    extractor:
        ``"pinned"`` (pinned beetles on a light background, ``carabidae-crops``), ``"plain"`` (one
        animal on a plain background of either polarity, ``collembola/positive``) or ``"well"``
        (a well photographed from above, ``bioscan-wells/single``).
    fraction:
        Share of the plate's specimens (rounded) cut from this folder.
    length_um:
        Range of body lengths, drawn log-uniformly; None takes the spec's ``specimen_length_um``.

    Example
    -------
    >>> CutoutSource(Path("collembola/positive"), "springtail", "plain", 0.4, (300.0, 2000.0)).taxon
    'springtail'
    """

    folder: Path
    taxon: str
    extractor: Extractor
    fraction: float
    length_um: tuple[float, float] | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not self.taxon or self.taxon in (PROCEDURAL_TAXON, DEBRIS_TAXON):
            raise ValueError(f"cut-out source {self.folder}: taxon {self.taxon!r} is empty or reserved")
        if self.extractor not in EXTRACTORS:
            raise ValueError(
                f"cut-out source {self.folder}: extractor must be one of {EXTRACTORS}, got {self.extractor!r}"
            )
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(
                f"cut-out source {self.folder}: fraction must be within [0, 1], got {self.fraction}"
            )
        if self.length_um is not None:
            lo, hi = self.length_um
            if not 0 < lo <= hi:
                raise ValueError(
                    f"cut-out source {self.folder}: length_um must be 0 < min <= max, got {self.length_um}"
                )
        if not Path(self.folder).is_dir():
            raise ValueError(f"cut-out source {self.folder} is not a folder")


@dataclass
class PlateSpec:
    """What to generate. Deterministic: the same spec gives the same plate, byte for byte.

    Attributes
    ----------
    width, height:
        Plate size in pixels.
    n_specimens:
        Specimens lying apart: their masks stay at least 40 um from any other specimen's.
    n_touching_pairs:
        Additional pairs of specimens whose bodies touch (each pair adds 2 specimens).
    n_debris:
        Particles and fibres that are not specimens, each smaller than 300 um.
    um_per_px:
        Scale; written to the TIFF resolution tags.
    specimen_length_um:
        Range of body lengths (drawn log-uniformly: small beetles are the common ones).
    seams:
        Stitching seams: per-tile gain steps and faint lines on a 2000-px grid.
    bit_depth:
        8 or 16.
    real_cutouts:
        A folder of photographs of single beetles (like ``../shared/data/carabidae-crops``); a
        fraction ``real_fraction`` of the specimens are cut from them, the rest are procedural.
    real_fraction:
        Fraction of specimens (rounded) cut from ``real_cutouts``. ``real_cutouts`` with
        ``real_fraction`` is the same as a first :class:`CutoutSource` ``(real_cutouts, "carabid",
        "pinned", real_fraction)``, and lays out exactly as before cut-out sources existed.
    seed:
        Seeds every random choice.
    cutout_sources:
        Further folders of real cut-outs, each with its taxon, extractor, share of the specimens
        and body lengths (:class:`CutoutSource`); the shares of all sources (``real_fraction``
        included, where ``real_cutouts`` is set) add up to at most 1, the rest are procedural.
    background:
        ``"paper"``: filter paper in the dish (beetle samples). ``"dark"``: a dark grey dish
        bottom (springtail samples in ethanol): pale animals show pale on dark, and debris is pale
        dust and lint.
    """

    width: int = 6000
    height: int = 6000
    n_specimens: int = 40
    n_touching_pairs: int = 4
    n_debris: int = 30
    um_per_px: float = 5.0
    specimen_length_um: tuple[float, float] = (1500.0, 6000.0)
    seams: bool = True
    bit_depth: int = 8
    real_cutouts: Path | None = None
    real_fraction: float = 0.5
    seed: int = 0
    cutout_sources: tuple[CutoutSource, ...] = ()
    background: Literal["paper", "dark"] = "paper"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if self.width < 64 or self.height < 64:
            raise ValueError(f"plate must be at least 64 x 64 px, got {self.width} x {self.height}")
        for name in ("n_specimens", "n_touching_pairs", "n_debris"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.um_per_px > 0:
            raise ValueError(f"um_per_px must be positive, got {self.um_per_px}")
        lo, hi = self.specimen_length_um
        if not 0 < lo <= hi:
            raise ValueError(f"specimen_length_um must be 0 < min <= max, got {self.specimen_length_um}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")
        if not 0.0 <= self.real_fraction <= 1.0:
            raise ValueError(f"real_fraction must be within [0, 1], got {self.real_fraction}")
        if self.real_cutouts is not None and not Path(self.real_cutouts).is_dir():
            raise ValueError(f"real_cutouts {self.real_cutouts} is not a folder")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        for source in self.cutout_sources:
            if not isinstance(source, CutoutSource):
                raise ValueError(f"cutout_sources must hold CutoutSource objects, got {source!r}")
            source.validate()
        total = sum(source.fraction for source in self.sources())
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fractions of the cut-out sources add up to {total:g}, more than 1")

    def sources(self) -> tuple[CutoutSource, ...]:
        """Every source of real cut-outs: ``real_cutouts`` first (as carabids), then ``cutout_sources``."""
        first: tuple[CutoutSource, ...] = ()
        if self.real_cutouts is not None:
            first = (CutoutSource(Path(self.real_cutouts), "carabid", "pinned", self.real_fraction),)
        return first + tuple(self.cutout_sources)


@dataclass
class GroundTruthObject:
    """One pasted object.

    Attributes
    ----------
    bbox:
        ``(x, y, w, h)`` in full-resolution pixels: the exact bounding box of the pasted mask
        (sprite alpha >= 0.5).
    kind:
        ``"specimen"`` or ``"debris"``.
    touching:
        True for both members of a touching pair.
    source:
        ``"procedural"`` or the file name of the photograph a real cut-out came from.
    taxon:
        ``"procedural-beetle"``, the cut-out source's taxon (``"carabid"`` for ``real_cutouts``,
        ``"springtail"``, ...), or ``"debris"``.
    """

    bbox: tuple[int, int, int, int]
    kind: str
    touching: bool
    source: str
    taxon: str


@dataclass(frozen=True)
class _Placement:
    """Where one sprite's frame goes, and the recipe that draws it."""

    recipe: Recipe
    x: int  # plate coordinates of the frame's top-left corner
    y: int
    h: int  # frame size
    w: int


@dataclass
class PlateTruth:
    """The answer key of a plate.

    Attributes
    ----------
    spec:
        The spec the plate was made from.
    width, height:
        Plate size in pixels.
    objects:
        Every pasted object, in paste order (specimens first, then debris).
    dish_center:
        ``(x, y)`` of the dish's centre.
    dish_radius:
        Outer radius of the dish's glass rim in pixels.
    """

    spec: PlateSpec
    width: int
    height: int
    objects: list[GroundTruthObject]
    dish_center: tuple[float, float]
    dish_radius: float
    _placements: list[_Placement] = field(default_factory=list, repr=False, compare=False)
    _dish: DishGeometry | None = field(default=None, repr=False, compare=False)

    @property
    def specimens(self) -> list[GroundTruthObject]:
        """The objects of kind ``"specimen"``."""
        return [o for o in self.objects if o.kind == "specimen"]

    @property
    def debris(self) -> list[GroundTruthObject]:
        """The objects of kind ``"debris"``."""
        return [o for o in self.objects if o.kind == "debris"]

    @property
    def paper_radius(self) -> float:
        """Radius of the filter paper: inside the rim's inner edge. Every object lies inside it."""
        return self._geometry().paper_radius

    def _geometry(self) -> DishGeometry:
        if self._dish is None:
            self._dish = layout_plate(self.spec)._dish
        assert self._dish is not None
        return self._dish


# ------------------------------------------------------------------------------------------
# layout


class _Occupancy:
    """Coarse grid of blocked cells; a conservative test that masks keep their distance.

    Objects are placed with their frame's top-left corner on a cell corner. A cell is blocked
    where any pixel of a placed mask, grown by its gap, falls in it, or where the cell is not
    wholly inside the usable disc. A candidate fits where none of the cells its mask touches is
    blocked: that guarantees the gap (and may refuse a few placements that would have fitted).
    """

    def __init__(self, width: int, height: int, dish: DishGeometry, usable_radius: float) -> None:
        self.cell = c = max(2, math.ceil(max(width, height) / 2000))
        gh, gw = math.ceil(height / c), math.ceil(width / c)
        ys = np.arange(gh + 1) * c - dish.cy
        xs = np.arange(gw + 1) * c - dish.cx
        corner_in = np.add.outer(ys * ys, xs * xs) <= usable_radius * usable_radius
        allowed = corner_in[:-1, :-1] & corner_in[1:, :-1] & corner_in[:-1, 1:] & corner_in[1:, 1:]
        self.blocked = ~allowed

    def cells(self, mask: np.ndarray) -> np.ndarray:
        """Cells touched by ``mask`` placed with its top-left pixel on a cell corner."""
        c = self.cell
        h, w = mask.shape
        gh, gw = math.ceil(h / c), math.ceil(w / c)
        buf = np.zeros((gh * c, gw * c), bool)
        buf[:h, :w] = mask
        return buf.reshape(gh, c, gw, c).any(axis=(1, 3))

    def fits(self, cells: np.ndarray, gx: int, gy: int) -> bool:
        gh, gw = cells.shape
        H, W = self.blocked.shape
        if gx < 0 or gy < 0 or gy + gh > H or gx + gw > W:
            return False
        return not (self.blocked[gy : gy + gh, gx : gx + gw] & cells).any()

    def add(self, cells: np.ndarray, gx: int, gy: int, gap_px: float) -> None:
        k = math.ceil(gap_px / self.cell)
        grown = ndi.binary_dilation(np.pad(cells, k), np.ones((2 * k + 1, 2 * k + 1), bool))
        y0, x0 = gy - k, gx - k
        H, W = self.blocked.shape
        sy0, sx0 = max(0, -y0), max(0, -x0)
        ty0, tx0 = max(0, y0), max(0, x0)
        ty1, tx1 = min(H, y0 + grown.shape[0]), min(W, x0 + grown.shape[1])
        self.blocked[ty0:ty1, tx0:tx1] |= grown[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]

    def free_origins(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cells ``(gx, gy)`` where ``cells`` fit: an exhaustive search by FFT correlation.

        Large grids are searched at half resolution (2 x 2 cells pooled, still conservative),
        which keeps the FFT's memory small; the spots found are on even cells.
        """
        from scipy import fft as sp_fft

        f = 2 if max(self.blocked.shape) > 1000 else 1
        blocked = _pool(self.blocked, f)
        pattern = _pool(cells, f)
        H, W = blocked.shape
        fh, fw = pattern.shape
        if fh > H or fw > W:
            return np.empty(0, int), np.empty(0, int)
        shape = (sp_fft.next_fast_len(H + fh - 1), sp_fft.next_fast_len(W + fw - 1, real=True))
        spec = sp_fft.rfft2(blocked.astype(np.float32), shape)
        spec *= sp_fft.rfft2(pattern[::-1, ::-1].astype(np.float32), shape)
        hits = sp_fft.irfft2(spec, shape)[fh - 1 : H, fw - 1 : W]
        gy, gx = np.nonzero(hits < 0.5)
        return gx * f, gy * f


def _pool(cells: np.ndarray, f: int) -> np.ndarray:
    """``f x f`` blocks of cells pooled with any (the grid grown to a multiple of f)."""
    if f == 1:
        return cells
    h, w = cells.shape
    buf = np.zeros((-(-h // f) * f, -(-w // f) * f), bool)
    buf[:h, :w] = cells
    return buf.reshape(buf.shape[0] // f, f, buf.shape[1] // f, f).any(axis=(1, 3))


@dataclass
class _Shape:
    """A sprite's mask and body, for layout."""

    recipe: Recipe
    sprite: Sprite

    @property
    def mask(self) -> np.ndarray:
        return self.sprite.alpha >= ALPHA_MASK_LEVEL


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    if ys.size == 0:
        raise ValueError("a sprite came out empty (object too small for this um_per_px)")
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _overlap_count(a: np.ndarray, b: np.ndarray, ox: int, oy: int) -> int:
    """Pixels where ``a`` (at 0, 0) and ``b`` (at ox, oy) are both set."""
    ah, aw = a.shape
    bh, bw = b.shape
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(aw, ox + bw), min(ah, oy + bh)
    if x1 <= x0 or y1 <= y0:
        return 0
    return int(np.count_nonzero(a[y0:y1, x0:x1] & b[y0 - oy : y1 - oy, x0 - ox : x1 - ox]))


def _touching_offset(a: Sprite, b: Sprite, direction: float, penetration: int) -> tuple[int, int] | None:
    """Offset of ``b``'s frame from ``a``'s at which their bodies just overlap by a few pixels.

    ``b`` approaches ``a`` along ``direction`` (radians) until the bodies first touch, then moves
    ``penetration`` pixels further in.
    """
    d = np.array([math.cos(direction), math.sin(direction)])
    ca, cb = np.array(a.center), np.array(b.center)

    def offset(t: float) -> tuple[int, int]:
        o = ca + t * d - cb
        return round(float(o[0])), round(float(o[1]))

    def hit(t: float) -> int:
        ox, oy = offset(t)
        return _overlap_count(a.body, b.body, ox, oy)

    far = (math.hypot(*a.body.shape) + math.hypot(*b.body.shape)) / 2.0 + 2.0
    step = max(1.0, min(a.body.shape + b.body.shape) / 40.0)
    t = far
    while t > 0 and hit(t) == 0:
        t -= step
    if t <= 0:
        return None
    lo, hi = t, t + step  # hit(lo) > 0, hit(hi) == 0
    while hi - lo > 0.5:
        mid = (lo + hi) / 2.0
        if hit(mid) > 0:
            lo = mid
        else:
            hi = mid
    t_touch = lo - penetration
    if hit(t_touch) == 0:
        t_touch = lo
    return offset(t_touch)


def _compound(parts: list[tuple[Sprite, int, int]]) -> tuple[np.ndarray, int, int, tuple[float, float]]:
    """Union mask of sprites at offsets; its origin relative to the first, and its centre."""
    x0 = min(ox for _, ox, _ in parts)
    y0 = min(oy for _, _, oy in parts)
    x1 = max(ox + s.alpha.shape[1] for s, ox, _ in parts)
    y1 = max(oy + s.alpha.shape[0] for s, _, oy in parts)
    union = np.zeros((y1 - y0, x1 - x0), bool)
    for s, ox, oy in parts:
        h, w = s.alpha.shape
        union[oy - y0 : oy - y0 + h, ox - x0 : ox - x0 + w] |= s.alpha >= ALPHA_MASK_LEVEL
    cx = float(np.mean([s.center[0] + ox - x0 for s, ox, _ in parts]))
    cy = float(np.mean([s.center[1] + oy - y0 for s, _, oy in parts]))
    return union, x0, y0, (cx, cy)


class _Layout:
    """Places objects one by one on the occupancy grid."""

    def __init__(self, spec: PlateSpec, rng: np.random.Generator) -> None:
        self.spec = spec
        self.rng = rng
        self.dish = DishGeometry.for_plate(spec.width, spec.height, spec.um_per_px, rng)
        margin = max(8.0, 0.01 * self.dish.radius)
        self.usable = self.dish.paper_radius - margin
        self.grid = _Occupancy(spec.width, spec.height, self.dish, self.usable)
        self.placements: list[_Placement] = []
        self.objects: list[GroundTruthObject] = []

    def find_spot(self, mask: np.ndarray, center: tuple[float, float]) -> tuple[int, int] | None:
        """A cell-aligned origin where ``mask`` fits, or None.

        Tries random free cells for the body's centre first (a natural, uniform scatter); on a
        crowded plate falls back to an exhaustive search that takes a free spot far out towards
        the rim, which leaves the most room inside.
        """
        grid = self.grid
        c = grid.cell
        cells = grid.cells(mask)
        ccx, ccy = int(center[0] // c), int(center[1] // c)
        free = np.flatnonzero(~grid.blocked)
        if free.size == 0:
            return None
        W = grid.blocked.shape[1]
        for k in self.rng.integers(0, free.size, _TRIALS):
            gy, gx = divmod(int(free[k]), W)
            if grid.fits(cells, gx - ccx, gy - ccy):
                return (gx - ccx) * c, (gy - ccy) * c
        gxs, gys = grid.free_origins(cells)
        if gxs.size == 0:
            return None
        far = np.hypot((gxs + ccx) * c - self.dish.cx, (gys + ccy) * c - self.dish.cy)
        best = np.nonzero(far >= far.max() - 2 * c)[0]
        k = int(best[self.rng.integers(best.size)])
        return int(gxs[k]) * c, int(gys[k]) * c

    def place(self, mask: np.ndarray, x: int, y: int, gap_px: float) -> None:
        """Block the cells of ``mask`` at a spot returned by :meth:`find_spot`."""
        c = self.grid.cell
        self.grid.add(self.grid.cells(mask), x // c, y // c, gap_px)

    def commit(
        self, shape: _Shape, x: int, y: int, kind: str, touching: bool, source: str, taxon: str
    ) -> None:
        bx, by, bw, bh = _mask_box(shape.mask)
        h, w = shape.sprite.alpha.shape
        self.placements.append(_Placement(shape.recipe, x, y, h, w))
        self.objects.append(GroundTruthObject((x + bx, y + by, bw, bh), kind, touching, source, taxon))


class _CrowdedError(ValueError):
    """The objects did not fit into the dish."""


_LAYOUT_RESTARTS = 6


def _too_crowded(spec: PlateSpec, what: str) -> _CrowdedError:
    return _CrowdedError(
        f"cannot place {what} on a {spec.width} x {spec.height} px plate at {spec.um_per_px} um/px "
        f"with {spec.n_specimens} specimens, {spec.n_touching_pairs} touching pairs and "
        f"{spec.n_debris} debris: the dish is full (use a larger plate, fewer objects, a coarser "
        f"um_per_px or smaller specimen_length_um)"
    )


def _specimen_recipes(
    spec: PlateSpec, rng: np.random.Generator, usable_radius: float
) -> list[tuple[Recipe, str, str]]:
    """Recipes, sources and taxa for all specimens: pairs' members first, then the separated ones.

    On a crowded plate more procedural beetles have their legs drawn in: the share grows from
    30 % with the fraction of the dish their bodies would cover. Each cut-out source takes its
    share of the specimens (a random set of them); its photos come in a random order, and a plate
    cuts at most ``_MAX_PHOTOS`` of them per source (reused at other sizes and angles), so that
    cutting them out stays quick. A source with its own ``length_um`` redraws its specimens'
    lengths after every other draw, so a spec with ``real_cutouts`` alone draws the same random
    numbers in the same order as before cut-out sources existed.
    """
    n = spec.n_specimens + 2 * spec.n_touching_pairs
    lo, hi = spec.specimen_length_um
    lengths_um = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    seeds = rng.integers(0, 2**31 - 1, n)
    angles = rng.uniform(0, 2 * math.pi, n)
    compact_draw = rng.random(n)
    sources = spec.sources()
    folders: list[list[Path]] = []
    for source in sources:
        files = list_cutout_files(Path(source.folder))
        if not files:
            raise ValueError(f"cut-out folder {source.folder} holds no images")
        folders.append(files)
    # specimen i belongs to source k where its rank in a random order falls in k's share
    bounds = np.round(np.cumsum([0.0] + [src.fraction for src in sources]) * n).astype(int)
    owner = np.full(n, -1)
    order = rng.permutation(n)
    for k in range(len(sources)):
        owner[order[bounds[k] : bounds[k + 1]]] = k
    # one shuffle per folder (without any source, an empty one: the random stream stays as it was)
    queues = [[files[int(j)] for j in rng.permutation(len(files))] for files in folders or [[]]]
    for k, source in enumerate(sources):
        mine = np.flatnonzero(owner == k)
        if source.length_um is not None and mine.size:
            s_lo, s_hi = source.length_um
            lengths_um[mine] = np.exp(rng.uniform(math.log(s_lo), math.log(s_hi), mine.size))
    body_cover = float(np.sum(0.3 * (lengths_um / spec.um_per_px) ** 2)) / (math.pi * usable_radius**2)
    compact = compact_draw < max(0.3, min(1.0, (body_cover - 0.05) / 0.15))
    usable: list[list[Path]] = [[] for _ in sources]
    reuse = [itertools.count() for _ in sources]

    def next_photo(k: int) -> Path:
        source, queue = sources[k], queues[k]
        while queue and len(usable[k]) < _MAX_PHOTOS[source.extractor]:
            path = queue.pop(0)
            if load_cutout(path, source.extractor) is not None:
                usable[k].append(path)
                return path
        if not usable[k]:
            raise ValueError(
                f"no usable specimen could be cut out of any image in {source.folder} "
                f"(extractor {source.extractor!r})"
            )
        return usable[k][next(reuse[k]) % len(usable[k])]

    out: list[tuple[Recipe, str, str]] = []
    for i in range(n):
        length_px = float(lengths_um[i] / spec.um_per_px)
        k = int(owner[i])
        if k >= 0:
            path = next_photo(k)
            source = sources[k]
            recipe = Recipe(
                "real", int(seeds[i]), length_px, float(angles[i]), path, extractor=source.extractor
            )
            out.append((recipe, path.name, source.taxon))
        else:
            recipe = Recipe(
                "procedural", int(seeds[i]), length_px, float(angles[i]), compact=bool(compact[i])
            )
            out.append((recipe, "procedural", PROCEDURAL_TAXON))
    return out


def _retry(recipe: Recipe, attempt: int, rng: np.random.Generator) -> Recipe:
    """The recipe for another attempt to place a specimen: turned, then drawn compact."""
    if attempt == 0:
        return recipe
    compact = recipe.compact or (recipe.kind == "procedural" and attempt >= 2)
    return dataclasses.replace(recipe, angle=float(rng.uniform(0, 2 * math.pi)), compact=compact)


def _plan(spec: PlateSpec) -> PlateTruth:
    """Lay the plate out; where a random layout jams, start again from the next seed stream."""
    spec.validate()
    error: _CrowdedError | None = None
    for restart in range(_LAYOUT_RESTARTS):
        try:
            return _plan_once(spec, np.random.default_rng([spec.seed, 20251, restart]))
        except _CrowdedError as exc:
            error = exc
    assert error is not None
    raise error


def _plan_once(spec: PlateSpec, rng: np.random.Generator) -> PlateTruth:
    lay = _Layout(spec, rng)
    recipes = _specimen_recipes(spec, rng, lay.usable)
    gap = max(4.0, _SPECIMEN_GAP_UM / spec.um_per_px)

    # touching pairs first (they need the most room), largest first
    n_pair = 2 * spec.n_touching_pairs
    pairs = [(recipes[2 * k], recipes[2 * k + 1]) for k in range(spec.n_touching_pairs)]
    pairs.sort(key=lambda p: -(p[0][0].length_px + p[1][0].length_px))
    for (ra, sa, ta), (rb, sb, tb) in pairs:
        placed = False
        for attempt in range(_ANGLE_RETRIES):
            direction = float(rng.uniform(0, 2 * math.pi))
            rb_try = _retry(rb, attempt, rng)
            if attempt >= 2 and ra.kind == "procedural":
                ra = dataclasses.replace(ra, compact=True)
            a = _Shape(ra, build_sprite(ra, full=False))
            b = _Shape(rb_try, build_sprite(rb_try, full=False))
            pen = int(np.clip(round(min(ra.length_px, rb.length_px) * 0.01), 2, 4))
            off = _touching_offset(a.sprite, b.sprite, direction, pen)
            if off is None:
                continue
            union, ux, uy, center = _compound([(a.sprite, 0, 0), (b.sprite, off[0], off[1])])
            spot = lay.find_spot(union, center)
            if spot is None:
                continue
            x, y = spot
            lay.place(union, x, y, gap)
            lay.commit(a, x - ux, y - uy, "specimen", True, sa, ta)
            lay.commit(b, x - ux + off[0], y - uy + off[1], "specimen", True, sb, tb)
            placed = True
            break
        if not placed:
            raise _too_crowded(spec, "a touching pair")

    singles = sorted(recipes[n_pair:], key=lambda r: -r[0].length_px)
    for recipe, source, taxon in singles:
        for attempt in range(_ANGLE_RETRIES):
            r = _retry(recipe, attempt, rng)
            shape = _Shape(r, build_sprite(r, full=False))
            spot = lay.find_spot(shape.mask, shape.sprite.center)
            if spot is not None:
                lay.place(shape.mask, *spot, gap)
                lay.commit(shape, *spot, "specimen", False, source, taxon)
                break
        else:
            raise _too_crowded(spec, f"a specimen {recipe.length_px * spec.um_per_px:.0f} um long")

    debris_gap = max(3.0, _DEBRIS_GAP_UM / spec.um_per_px)
    limit_px = DEBRIS_MAX_UM / spec.um_per_px
    pale = spec.background == "dark"  # dust and lint show pale on a dark dish
    for _ in range(spec.n_debris):
        size_um = float(rng.uniform(40.0, 270.0))
        recipe = Recipe(
            "debris",
            int(rng.integers(0, 2**31 - 1)),
            max(3.0, size_um / spec.um_per_px),
            float(rng.uniform(0, 2 * math.pi)),
            pale=pale,
        )
        shape = _Shape(recipe, build_sprite(recipe, full=False))
        while max(_mask_box(shape.mask)[2:]) >= limit_px and recipe.length_px > 3.0:
            recipe = dataclasses.replace(recipe, length_px=max(3.0, recipe.length_px * 0.85))
            shape = _Shape(recipe, build_sprite(recipe, full=False))
        if max(_mask_box(shape.mask)[2:]) >= limit_px:
            raise ValueError(
                f"um_per_px {spec.um_per_px} is too coarse to draw debris under {DEBRIS_MAX_UM} um"
            )
        spot = lay.find_spot(shape.mask, shape.sprite.center)
        if spot is None:
            raise _too_crowded(spec, "a debris particle")
        lay.place(shape.mask, *spot, debris_gap)
        lay.commit(shape, *spot, "debris", False, "procedural", DEBRIS_TAXON)

    # paste order: specimens (pairs, then singles), then debris; that is the commit order
    return PlateTruth(
        spec=spec,
        width=spec.width,
        height=spec.height,
        objects=lay.objects,
        dish_center=(lay.dish.cx, lay.dish.cy),
        dish_radius=lay.dish.radius,
        _placements=lay.placements,
        _dish=lay.dish,
    )


def layout_plate(spec: PlateSpec) -> PlateTruth:
    """Decide the plate: dish, and every object's sprite, position and exact box. Draws no image.

    Deterministic in ``spec`` (including the seed, and the content of ``real_cutouts`` and of
    the cut-out sources' folders).

    Raises
    ------
    ValueError
        For an invalid spec, or where the objects do not fit into the dish.
    """
    return _plan(spec)


# ------------------------------------------------------------------------------------------
# rendering


class _Renderer:
    """Paints regions of a planned plate; keeps the sprites it built until told to drop them."""

    def __init__(self, truth: PlateTruth) -> None:
        if not truth._placements and truth.objects:
            truth = layout_plate(truth.spec)
        self.truth = truth
        spec = truth.spec
        self.bit_depth = spec.bit_depth
        self.background = PlateBackground(
            spec.width, spec.height, truth._geometry(), spec.um_per_px, spec.seams, spec.seed, spec.background
        )
        pl = truth._placements
        self.fx0 = np.array([p.x for p in pl], dtype=np.int64)
        self.fy0 = np.array([p.y for p in pl], dtype=np.int64)
        self.fx1 = self.fx0 + np.array([p.w for p in pl], dtype=np.int64)
        self.fy1 = self.fy0 + np.array([p.h for p in pl], dtype=np.int64)
        self.cache: dict[int, _Chunks] = {}
        self.peak_cache_bytes = 0

    def sprite(self, i: int) -> _Chunks:
        s = self.cache.get(i)
        if s is None:
            s = _Chunks(build_sprite(self.truth._placements[i].recipe, full=True))
            self.cache[i] = s
            self.peak_cache_bytes = max(self.peak_cache_bytes, sum(v.nbytes for v in self.cache.values()))
        return s

    def drop_above(self, y: int) -> None:
        """Forget sprite rows above plate row ``y`` (row-major rendering never needs them again)."""
        for i in list(self.cache):
            if self.fy1[i] <= y:
                del self.cache[i]
            else:
                self.cache[i].drop_above(y - int(self.fy0[i]))
        _release_free_memory()

    def lit(self, x0: int, y0: int, w: int, h: int, objects: bool = True) -> np.ndarray:
        """Region before noise and quantisation: float32 ``(h, w, 3)``."""
        img = self.background.render(x0, y0, w, h)
        if objects and self.fx0.size:
            hits = np.nonzero((self.fx0 < x0 + w) & (self.fx1 > x0) & (self.fy0 < y0 + h) & (self.fy1 > y0))[
                0
            ]
            for i in hits:
                self._paste(img, int(i), x0, y0)
        self.background.apply_lighting(img, x0, y0)
        return img

    def region(self, x0: int, y0: int, w: int, h: int, objects: bool = True) -> np.ndarray:
        img = self.lit(x0, y0, w, h, objects)
        return self.background.finish(img, x0, y0, self.bit_depth)

    def _paste(self, img: np.ndarray, i: int, x0: int, y0: int) -> None:
        chunks = self.sprite(i)
        p = self.truth._placements[i]
        h, w = img.shape[:2]
        ix0, iy0 = max(p.x, x0), max(p.y, y0)
        ix1, iy1 = min(p.x + p.w, x0 + w), min(p.y + p.h, y0 + h)
        if ix1 <= ix0 or iy1 <= iy0:
            return
        for r0, r1, rgb, alpha, shadow in chunks.rows(iy0 - p.y, iy1 - p.y):
            dst = img[r0 + p.y - y0 : r1 + p.y - y0, ix0 - x0 : ix1 - x0]
            cols = slice(ix0 - p.x, ix1 - p.x)
            sh = shadow[:, cols]
            if sh.any():
                dst *= (np.float32(1.0) - sh.astype(np.float32) * np.float32(1 / 255))[..., None]
            al = alpha[:, cols]
            if al.any():
                a = (al.astype(np.float32) * np.float32(1 / 255))[..., None]
                dst *= np.float32(1.0) - a
                dst += rgb[:, cols].astype(np.float32) * a


class _Chunks:
    """A sprite's colour, alpha and shadow kept as bands of rows, so that rows already rendered
    can be freed while the rest of the sprite waits for the next rows of tiles."""

    ROWS = 128

    def __init__(self, sprite: Sprite) -> None:
        assert sprite.rgb is not None and sprite.shadow is not None
        n = sprite.alpha.shape[0]
        self.bands: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for k in range(0, n, self.ROWS):
            rows = slice(k, min(n, k + self.ROWS))
            self.bands[k] = (sprite.rgb[rows].copy(), sprite.alpha[rows].copy(), sprite.shadow[rows].copy())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes + c.nbytes for a, b, c in self.bands.values())

    def drop_above(self, row: int) -> None:
        for k in [k for k in self.bands if k + self.ROWS <= row]:
            del self.bands[k]

    def rows(self, r0: int, r1: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """Pieces ``(start, stop, rgb, alpha, shadow)`` covering sprite rows ``[r0, r1)``."""
        k = r0 - r0 % self.ROWS
        while k < r1:
            rgb, alpha, shadow = self.bands[k]
            a, b = max(r0, k), min(r1, k + self.ROWS)
            yield a, b, rgb[a - k : b - k], alpha[a - k : b - k], shadow[a - k : b - k]
            k += self.ROWS


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; a no-op elsewhere).

    Cutting out real beetles and building sprites free many medium-sized arrays; glibc keeps
    that memory in its heap unless asked, which adds ~100 MB to the peak of a long render.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tiles(width: int, height: int, tile: int) -> Iterator[tuple[int, int, int, int]]:
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            yield x, y, min(tile, width - x), min(tile, height - y)


def render_plate(spec: PlateSpec) -> tuple[np.ndarray, PlateTruth]:
    """The whole plate in memory, ``(height, width, 3)`` uint8 or uint16, and its truth.

    For small plates (tests, demos). Identical, pixel for pixel, to :func:`write_plate`'s output.
    """
    truth = layout_plate(spec)
    dtype = np.uint8 if spec.bit_depth == 8 else np.uint16
    image = np.empty((spec.height, spec.width, 3), dtype)
    renderer = _Renderer(truth)
    band = 512
    for x, y, w, h in _tiles(spec.width, spec.height, band):
        if x == 0:
            renderer.drop_above(y)
        image[y : y + h, x : x + w] = renderer.region(x, y, w, h)
    return image, truth


def render_region(truth: PlateTruth, x: int, y: int, w: int, h: int, *, objects: bool = True) -> np.ndarray:
    """One region of a plate, exactly as :func:`render_plate` draws it.

    ``objects=False`` draws the empty plate (same paper, lighting and noise): the difference
    between the two shows exactly where objects and their shadows were pasted.
    """
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > truth.width or y + h > truth.height:
        raise ValueError(f"region {x}, {y}, {w} x {h} is not inside the {truth.width} x {truth.height} plate")
    return _Renderer(truth).region(x, y, w, h, objects)


def object_masks(truth: PlateTruth) -> Iterator[tuple[GroundTruthObject, np.ndarray, tuple[int, int]]]:
    """For each object (in order): its mask (alpha >= 0.5) in its sprite frame, and the frame's
    top-left corner ``(x, y)`` on the plate."""
    if not truth._placements and truth.objects:
        truth = layout_plate(truth.spec)
    for obj, p in zip(truth.objects, truth._placements, strict=True):
        sprite = build_sprite(p.recipe, full=False)
        yield obj, sprite.alpha >= ALPHA_MASK_LEVEL, (p.x, p.y)


def write_plate(
    spec: PlateSpec, path: Path, *, tile: int = 512, compression: str | None = "lzw"
) -> PlateTruth:
    """Render a plate tile by tile into a tiled BigTIFF; return its truth.

    Never holds the full image: memory is one tile plus the sprites overlapping the current row
    of tiles. Resolution tags carry ``um_per_px`` (pixels per centimetre). The file appears under
    its name only once complete (written to ``<name>.part`` and renamed).

    Parameters
    ----------
    spec:
        What to generate.
    path:
        Output file (``.tif``/``.tiff``).
    tile:
        Tile size in pixels, a multiple of 16.
    compression:
        Any tifffile compression name (``"lzw"``, ``"zlib"``, ``"zstd"``, ...) or None.
    """
    import tifffile

    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    path = Path(path)
    truth = layout_plate(spec)
    _release_free_memory()
    renderer = _Renderer(truth)
    dtype = np.uint8 if spec.bit_depth == 8 else np.uint16

    def tiles() -> Iterator[np.ndarray]:
        for x, y, w, h in _tiles(spec.width, spec.height, tile):
            if x == 0:
                renderer.drop_above(y)
            yield renderer.region(x, y, w, h)

    px_per_cm = 1e4 / spec.um_per_px
    part = path.with_name(path.name + ".part")
    try:
        tifffile.imwrite(
            part,
            tiles(),
            shape=(spec.height, spec.width, 3),
            dtype=dtype,
            tile=(tile, tile),
            bigtiff=True,
            photometric="rgb",
            compression=None if compression in (None, "none") else compression,
            resolution=(px_per_cm, px_per_cm),
            resolutionunit="CENTIMETER",
            software="labpipe.synth",
        )
        os.replace(part, path)
    finally:
        if part.exists():
            part.unlink()
    return truth
