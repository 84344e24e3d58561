"""Classical specimen detector: background/foreground segmentation on a plain background.

No weights. Finds beetles (and other arthropods) lying on filter paper in a Petri dish, or on the
floor of a microplate well, in a reduced-resolution *overview* of the plate image.

Pipeline (each step a pure function in :mod:`labpipe.detect.dish`, :mod:`~labpipe.detect.background`
and :mod:`~labpipe.detect.segment`, tested alone):

1. Work resolution: the overview is block-averaged by an integer factor so that the smallest
   specimen still spans ``min_work_px`` (16) pixels, or at least 8 where the longer side would
   otherwise exceed 2560 px (:func:`to_float_rgb`, :func:`downsample_mean`).
2. Dish (:func:`~labpipe.detect.dish.find_dish`, on a <= 256 px luminance image): a bright disc in
   a dark surround, else a well-supported large circle (a well wall), else the whole image minus a
   border (logged at debug level). The rim is excluded.
3. Background (:func:`~labpipe.detect.background.estimate_background`): robust block medians
   around a quadratic lighting trend, blocks a quarter of the largest specimen.
4. Foreground (:func:`~labpipe.detect.segment.foreground_strength`): darkening and colour change
   after flat-field division, never brightening (glare). Thresholds ``max(floor, k * sigma)``
   with ``sigma`` the noise measured on the bright side of the dish
   (:func:`~labpipe.detect.segment.half_normal_noise`), ``k`` = 5 (low) and 10 (high);
   hysteresis, specks removed, small holes (reflections) filled
   (:func:`~labpipe.detect.segment.foreground_mask`).
5. Bodies (:func:`~labpipe.detect.segment.find_bodies`): an opening relative to each blob's own
   thickness keeps bodies and drops legs, antennae and fibres; bodies shorter than the minimum
   size are debris. Touching bodies are split by distance transform + watershed, guarded against
   cutting one specimen in pieces (:func:`~labpipe.detect.segment.split_touching`). Legs and
   antennae are then given back to the body they grow from
   (:func:`~labpipe.detect.segment.assign_to_bodies`), so each box covers a whole specimen; loose
   legs and fibres have no body and are not reported.
6. Score (:func:`score_object`) from contrast, size, thickness and shape; detections below
   ``score_threshold`` are dropped.

Sizes: ``min_size_um`` is used when the scale of the array is known (``um_per_px``); otherwise
``min_size_px`` is used **in the pixels of the array given to** :meth:`ClassicalDetector.detect` (the
overview), not of the full-resolution image: the caller converts it (``min_size_px`` from the
configuration is in full-resolution pixels, so the caller divides it by the overview's reduction
factor). Boxes are returned in the pixel frame of the given array; the caller scales them to full
resolution with :meth:`~labpipe.detect.base.Detection.scaled`.

Known limits: two elongated specimens pressed side by side along their length, or touching head
to tail in line, are one blob to the distance transform and are usually reported as one; a small
specimen touching a much larger one may be taken for its leg. Pale, translucent specimens on a
white background are barely darker than it and may score below the threshold. The detector cannot
tell a loose leg or wing as thick as a small body from a specimen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import convex_hull_image

from labpipe.config import DetectorConfig
from labpipe.detect.background import estimate_background
from labpipe.detect.base import Detection
from labpipe.detect.dish import Dish, find_dish, resize_mask
from labpipe.detect.segment import (
    assign_to_bodies,
    find_bodies,
    foreground_mask,
    foreground_strength,
    half_normal_noise,
    split_touching,
)

__all__ = [
    "Candidate",
    "ClassicalDetector",
    "ClassicalResult",
    "downsample_mean",
    "score_object",
    "to_float_rgb",
]

log = logging.getLogger(__name__)

ALGORITHM = "classical-1"


def to_float_rgb(image: np.ndarray, factor: int = 1) -> np.ndarray:
    """An ``(H', W', 3)`` float32 array in [0, 1] from uint8/uint16/float RGB, RGBA or grey input,
    block-averaged by the integer ``factor`` (see :func:`downsample_mean`).

    Averaging happens before the conversion to float, so a large uint8 overview is never copied
    to float at full size.

    Examples
    --------
    >>> to_float_rgb(np.full((2, 2), 255, np.uint8)).tolist()[0][0]
    [1.0, 1.0, 1.0]
    >>> to_float_rgb(np.full((4, 4, 3), 255, np.uint8), factor=2).shape
    (2, 2, 3)
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image; given shape {a.shape}")
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif a.dtype == np.uint16:
        scale = 1.0 / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        scale = 1.0
        a = np.clip(a, 0.0, 1.0)
    else:
        raise ValueError(f"unsupported pixel type {a.dtype}; use uint8, uint16 or float in [0, 1]")
    out = downsample_mean(a, factor) * np.float32(scale)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return out


def downsample_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean (float32) by an integer ``factor`` along both axes.

    A partial last row or column of blocks is averaged over the pixels it has (the image is
    padded by repeating its edge). Sums are taken over ``factor**2`` strided views, in integers
    for integer input, which is several times faster than reshaping.

    Examples
    --------
    >>> downsample_mean(np.arange(16, dtype=np.float32).reshape(4, 4, 1), 2)[..., 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> downsample_mean(np.array([[0, 2, 4]], np.uint8), 2).tolist()
    [[1.0, 4.0]]
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1; given {factor}")
    a = np.asarray(image)
    if factor == 1:
        return a.astype(np.float32)
    h, w = a.shape[:2]
    gh, gw = -(-h // factor), -(-w // factor)
    if (gh * factor, gw * factor) != (h, w):
        pad = [(0, gh * factor - h), (0, gw * factor - w)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, mode="edge")
    acc_type = np.uint32 if np.issubdtype(a.dtype, np.integer) else np.float32
    total = np.zeros((gh, gw, *a.shape[2:]), dtype=acc_type)
    for dy in range(factor):
        for dx in range(factor):
            total += a[dy::factor, dx::factor]
    return total.astype(np.float32) / np.float32(factor * factor)


def score_object(
    contrast: float,
    length_ratio: float,
    thickness: float,
    solidity: float,
    elongation: float,
    *,
    contrast_floor: float = 1.4,
    thickness_floor: float = 0.45,
) -> float:
    """Detection score in [0, 1] from an object's contrast, size and shape.

    ``score = q_contrast ** 0.5 * q_size ** 0.25 * q_shape ** 0.25``, a weighted geometric mean: any
    one bad cue pulls the score to 0, contrast counts most. With ``c0 = contrast_floor`` and
    ``t0 = thickness_floor``:

    * ``q_contrast = clip((contrast - c0) / 2.5, 0, 1)``; ``contrast`` is the body's median
      foreground strength over the low (noise) threshold, so an object barely above the noise
      scores 0 and one ``c0 + 2.5`` times the threshold scores 1;
    * ``q_size = clip(length_ratio - 0.5, 0, 1) * clip((thickness - t0) / 0.4, 0, 1)``; the
      body's longer side and its largest inscribed diameter, both over the minimum specimen size.
      Bodies shorter than the minimum size are dropped before scoring; the thickness term rejects
      specks and loose legs that are long enough but far thinner than a body (a beetle is about
      half as wide as long);
    * ``q_shape = clip((solidity - 0.3) / 0.4, 0, 1) * clip((10 - elongation) / 5, 0, 1)``:
      bodies are compact (beetles 0.8-0.95; winged insects with legs down to 0.5) and at most about
      5:1 (the axis ratio from second moments); fibres, rings, loose legs and crumpled fragments
      are not.

    Examples
    --------
    >>> score_object(4.0, 2.0, 1.0, 0.9, 2.0)
    1.0
    >>> score_object(1.2, 2.0, 1.0, 0.9, 2.0)
    0.0
    """
    q_contrast = float(np.clip((contrast - contrast_floor) / 2.5, 0.0, 1.0))
    q_size = float(
        np.clip(length_ratio - 0.5, 0.0, 1.0) * np.clip((thickness - thickness_floor) / 0.4, 0.0, 1.0)
    )
    q_shape = float(np.clip((solidity - 0.3) / 0.4, 0.0, 1.0) * np.clip((10.0 - elongation) / 5.0, 0.0, 1.0))
    return q_contrast**0.5 * q_size**0.25 * q_shape**0.25


@dataclass(frozen=True)
class Candidate:
    """One segmented object before the score threshold (in the input array's pixel frame)."""

    box: tuple[float, float, float, float]
    """``(x, y, w, h)`` of the whole specimen (body and appendages)."""
    body_box: tuple[float, float, float, float]
    body_area: float
    """Body area in input-array pixels."""
    length_ratio: float
    solidity: float
    contrast: float
    score: float
    split: bool
    """True when the body came from splitting a blob of touching bodies."""
    thickness: float = 0.0
    """Body's largest inscribed diameter over the minimum specimen size."""
    elongation: float = 0.0
    """Body's major over minor axis (from its second moments)."""
    edge: bool = False
    """True when the body touches the edge of the searched region."""
    strength_percentiles: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """50th, 75th and 90th percentiles of the body's foreground strength over the low threshold."""


@dataclass
class ClassicalResult:
    """Everything :meth:`ClassicalDetector.analyse` found, for debugging and evaluation."""

    detections: list[Detection]
    candidates: list[Candidate]
    dish: Dish
    factor: int
    thresholds: tuple[float, float]
    noise: tuple[float, float]
    timings: dict[str, float] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    """With ``keep_masks``: ``foreground`` (bool) and ``bodies`` (int32 labels), at work resolution."""


class ClassicalDetector:
    """Segmentation-based detector for specimens on filter paper or a well floor (no weights).

    Parameters
    ----------
    min_size_um : float
        Objects whose body's longer side is shorter than this are debris (scale known).
    min_size_px : int
        The same rule in pixels **of the array passed to** :meth:`detect` (scale unknown). The
        caller converts from full-resolution pixels.
    score_threshold : float
        Detections scoring below this are dropped (see :func:`score_object`).
    split_touching : bool
        Separate touching specimens (distance transform + watershed, guarded).
    max_size_um : float
        Largest specimen expected; sets the background model's block size (scale known). Without
        a scale a quarter of the shorter image side is used.

    Attributes
    ----------
    version : str
        ``classical-1@<hash of the settings>``.

    Examples
    --------
    >>> img = np.full((200, 200, 3), 220, np.uint8)
    >>> yy, xx = np.mgrid[:200, :200]
    >>> img[(yy - 100) ** 2 / 30**2 + (xx - 90) ** 2 / 15**2 < 1] = 60
    >>> [[round(v) for v in d.as_xywh()] for d in ClassicalDetector().detect(img, None)]
    [[76, 71, 29, 59]]
    """

    def __init__(
        self,
        min_size_um: float = 400.0,
        min_size_px: int = 24,
        score_threshold: float = 0.5,
        split_touching: bool = True,
        *,
        max_size_um: float = 12_000.0,
    ) -> None:
        if min_size_um <= 0 or min_size_px <= 0:
            raise ValueError(f"minimum sizes must be > 0; given {min_size_um} um and {min_size_px} px")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1]; given {score_threshold}")
        if max_size_um <= min_size_um:
            raise ValueError(f"max_size_um ({max_size_um}) must exceed min_size_um ({min_size_um})")
        self.min_size_um = float(min_size_um)
        self.min_size_px = int(min_size_px)
        self.score_threshold = float(score_threshold)
        self.split_touching = bool(split_touching)
        self.max_size_um = float(max_size_um)
        # Tuned constants (see the module and function docstrings); all are in the version hash.
        self.min_work_px = 16.0
        self.min_background = 0.03
        self.k_low, self.k_high = 5.0, 10.0
        self.floor_low, self.floor_high = 0.06, 0.15
        self.chroma_weight = 1.5
        self.body_radius_fraction = 0.15
        self.relative_radius = 0.2
        self.neck_ratio = 0.6
        self.thin_ratio = 0.0
        self.split_solidity = 0.95
        self.contrast_floor = 1.4
        self.contrast_percentile = 50.0
        self.thickness_floor = 0.45
        self.version: str = self._version()

    def _version(self) -> str:
        """``classical-1@<8 hex digits>``: the algorithm and a hash of every setting that changes
        its output (stored with every specimen)."""
        params = {
            "min_size_um": self.min_size_um,
            "min_size_px": self.min_size_px,
            "score_threshold": self.score_threshold,
            "split_touching": self.split_touching,
            "max_size_um": self.max_size_um,
            "min_work_px": self.min_work_px,
            "min_background": self.min_background,
            "k": [self.k_low, self.k_high],
            "floor": [self.floor_low, self.floor_high],
            "chroma_weight": self.chroma_weight,
            "body_radius_fraction": self.body_radius_fraction,
            "relative_radius": self.relative_radius,
            "neck_ratio": self.neck_ratio,
            "thin_ratio": self.thin_ratio,
            "split_solidity": self.split_solidity,
            "contrast_floor": self.contrast_floor,
            "contrast_percentile": self.contrast_percentile,
            "thickness_floor": self.thickness_floor,
        }
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
        return f"{ALGORITHM}@{digest}"

    @classmethod
    def from_config(cls, config: DetectorConfig, overview_factor: float = 1.0) -> ClassicalDetector:
        """The detector for ``config``, working on an overview ``overview_factor`` times smaller
        than the full-resolution image (``config.min_size_px`` is in full-resolution pixels).

        Examples
        --------
        >>> ClassicalDetector.from_config(DetectorConfig(min_size_px=24), overview_factor=4).min_size_px
        6
        """
        if not overview_factor >= 1.0:
            raise ValueError(f"overview_factor must be >= 1; given {overview_factor}")
        return cls(
            min_size_um=config.min_size_um,
            min_size_px=max(1, round(config.min_size_px / overview_factor)),
            score_threshold=config.score_threshold,
            split_touching=config.split_touching,
        )

    def __repr__(self) -> str:
        return (
            f"ClassicalDetector(min_size_um={self.min_size_um}, min_size_px={self.min_size_px}, "
            f"score_threshold={self.score_threshold}, split_touching={self.split_touching})"
        )

    def detect(self, rgb: np.ndarray, um_per_px: float | None) -> list[Detection]:
        """Boxes of the specimens in ``rgb`` (the overview), best score first, in its pixel frame."""
        return self.analyse(rgb, um_per_px).detections

    def analyse(
        self, rgb: np.ndarray, um_per_px: float | None, *, keep_masks: bool = False
    ) -> ClassicalResult:
        """Run the pipeline and return detections with every intermediate worth inspecting."""
        t0 = time.perf_counter()
        if um_per_px is not None and not um_per_px > 0:
            raise ValueError(f"um_per_px must be > 0 or None; given {um_per_px}")
        shape_in = np.shape(rgb)
        if len(shape_in) < 2 or shape_in[0] < 16 or shape_in[1] < 16:
            raise ValueError(f"image too small to search: shape {shape_in}, need at least 16 x 16")
        h, w = int(shape_in[0]), int(shape_in[1])
        if um_per_px:
            min_len = self.min_size_um / um_per_px
            max_len = max(self.max_size_um / um_per_px, 4 * min_len)
        else:
            min_len = float(self.min_size_px)
            max_len = max(min(h, w) / 4.0, 4 * min_len)
        # Work resolution: the smallest specimen keeps ``min_work_px`` pixels, or at least half of
        # that where the longer side would otherwise exceed 2560 px (speed).
        factor = max(int(min_len // self.min_work_px), -(-max(h, w) // 2560))
        factor = max(1, min(factor, int(min_len // (self.min_work_px / 2))))
        work = to_float_rgb(rgb, factor)
        wh, ww = work.shape[:2]
        min_w, max_w = min_len / factor, max_len / factor
        timings = {"prepare": time.perf_counter() - t0}

        t = time.perf_counter()
        small_f = max(1, -(-max(wh, ww) // 256))
        small = downsample_mean(_channel_mean(work), small_f)
        dish = find_dish(small)
        if not dish.found:
            log.debug("no dish found: searching the whole image minus a border (%s)", dish.method)
        search = resize_mask(dish.mask, (wh, ww))
        timings["dish"] = time.perf_counter() - t

        t = time.perf_counter()
        # Blocks of a quarter of the largest specimen, but at least 8 across the image's short side.
        block = max(4, min(round(max_w / 4), round(min(wh, ww) / 8)))
        bg = estimate_background(work, search, block=block)
        timings["background"] = time.perf_counter() - t

        t = time.perf_counter()
        strength = foreground_strength(work, bg, chroma_weight=self.chroma_weight)
        # Nothing can be seen against a black background (an unlit corner, an all-dark image).
        bg_lum = _channel_mean(bg)
        search = search & (bg_lum > np.float32(self.min_background))
        if not search.any():
            log.debug("no lit background to search against")
            timings["total"] = time.perf_counter() - t0
            return ClassicalResult([], [], dish, factor, (np.inf, np.inf), (0.0, 0.0), timings)
        # Noise from the signed darkening (the strength is clipped at 0), on its bright side only.
        signed = 1.0 - _channel_mean(work) / np.maximum(bg_lum, np.float32(1e-6))
        med = float(np.median(signed[search][:: max(1, int(search.sum()) // 250_000)]))
        sigma = half_normal_noise(signed, search)
        low = max(self.floor_low, self.k_low * sigma)
        high = max(self.floor_high, self.k_high * sigma, low)
        fg = foreground_mask(
            strength,
            low,
            high,
            search,
            min_area=max(4, round(min_w / 4) ** 2),
            max_hole_area=round((min_w / 2) ** 2),
        )
        timings["foreground"] = time.perf_counter() - t

        t = time.perf_counter()
        body_labels = np.zeros(fg.shape, dtype=np.int32) if keep_masks else None
        candidates = self._objects(fg, strength, search, low, min_w, factor, (h, w), body_labels)
        timings["objects"] = time.perf_counter() - t

        detections = [Detection(*c.box, score=c.score) for c in candidates if c.score >= self.score_threshold]
        detections.sort(key=lambda d: -d.score)
        timings["total"] = time.perf_counter() - t0
        return ClassicalResult(
            detections=detections,
            candidates=candidates,
            dish=dish,
            factor=factor,
            thresholds=(low, high),
            noise=(med, sigma),
            timings=timings,
            masks={"foreground": fg, "bodies": body_labels} if body_labels is not None else {},
        )

    def _objects(
        self,
        fg: np.ndarray,
        strength: np.ndarray,
        search: np.ndarray,
        low: float,
        min_w: float,
        factor: int,
        shape: tuple[int, int],
        body_labels: np.ndarray | None = None,
    ) -> list[Candidate]:
        """Bodies, split where touching, with their appendages; scored (work-pixel geometry)."""
        labels, n = ndi.label(fg)
        if n == 0:
            return []
        radius = max(1.0, self.body_radius_fraction * min_w)
        pad = 2
        # Per component, its bodies (legs and antennae opened away).
        comps: list[tuple[int, int, np.ndarray, list[tuple[tuple[slice, slice], np.ndarray, float]]]] = []
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None or max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) < min_w:
                continue
            y0, x0 = max(sl[0].start - pad, 0), max(sl[1].start - pad, 0)
            y1, x1 = min(sl[0].stop + pad, fg.shape[0]), min(sl[1].stop + pad, fg.shape[1])
            comp = labels[y0:y1, x0:x1] == i
            parts = find_bodies(
                comp, min_length=min_w, min_radius=radius, relative_radius=self.relative_radius
            )
            kept = []
            for j, psl in enumerate(ndi.find_objects(parts), start=1):
                if psl is None:
                    continue
                part = parts[psl] == j
                kept.append((psl, part, _solidity(part)))
            if kept:
                comps.append((y0, x0, comp, kept))

        out: list[Candidate] = []
        for y0, x0, comp, kept in comps:
            bodies = np.zeros(comp.shape, dtype=np.int32)
            split_of: dict[int, bool] = {}
            nb = 0
            for psl, part, sol in kept:
                if self.split_touching and sol < self.split_solidity:
                    sub = split_touching(
                        part,
                        min_distance=max(2, round(0.25 * min_w)),
                        neck_ratio=self.neck_ratio,
                        thin_ratio=self.thin_ratio,
                        min_solidity=self.split_solidity,
                        min_region_area=round((min_w / 2) ** 2),
                    )
                else:
                    sub = part.astype(np.int32)
                k = int(sub.max())
                view = bodies[psl]
                view[sub > 0] = sub[sub > 0] + nb
                for q in range(nb + 1, nb + k + 1):
                    split_of[q] = k > 1
                nb += k
            owners = assign_to_bodies(comp, bodies)
            if body_labels is not None:
                view = body_labels[y0 : y0 + comp.shape[0], x0 : x0 + comp.shape[1]]
                view[bodies > 0] = bodies[bodies > 0] + int(body_labels.max())
            h0, w0 = comp.shape
            s_crop = strength[y0 : y0 + h0, x0 : x0 + w0]
            inner = ndi.binary_erosion(search[y0 : y0 + h0, x0 : x0 + w0], iterations=2, border_value=1)
            body_slices = ndi.find_objects(bodies, max_label=nb)
            owner_slices = ndi.find_objects(owners, max_label=nb)
            for q, (bsl, osl) in enumerate(zip(body_slices, owner_slices, strict=True), start=1):
                if bsl is None or osl is None:
                    continue
                bmask = bodies[bsl] == q
                blen = max(bsl[0].stop - bsl[0].start, bsl[1].stop - bsl[1].start)
                if blen < min_w:
                    continue
                by, bx = np.nonzero(bmask)
                bd = ndi.distance_transform_edt(np.pad(bmask, 1))
                thickness = 2.0 * float(bd.max()) / min_w
                ev = np.sort(np.linalg.eigvalsh(np.cov(np.stack([by, bx]).astype(np.float64))))
                elongation = float(np.sqrt(max(ev[1], 1e-9) / max(ev[0], 1e-9)))
                solidity = _solidity(bmask)
                pct = np.percentile(s_crop[bsl][bmask], [50.0, 75.0, 90.0, self.contrast_percentile]) / low
                contrast = float(pct[3])
                length_ratio = float(blen / min_w)
                score = score_object(
                    contrast,
                    length_ratio,
                    thickness,
                    solidity,
                    elongation,
                    contrast_floor=self.contrast_floor,
                    thickness_floor=self.thickness_floor,
                )
                out.append(
                    Candidate(
                        box=_slice_box(osl, y0, x0, factor, shape),
                        body_box=_slice_box(bsl, y0, x0, factor, shape),
                        body_area=float(by.size * factor * factor),
                        length_ratio=length_ratio,
                        solidity=solidity,
                        contrast=contrast,
                        score=score,
                        split=split_of.get(q, False),
                        thickness=thickness,
                        elongation=elongation,
                        edge=bool((bmask & ~inner[bsl]).any()),
                        strength_percentiles=(float(pct[0]), float(pct[1]), float(pct[2])),
                    )
                )
        return out


def _channel_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the last (colour) axis, written out as sums: several times faster than ``mean``."""
    out = a[..., 0].astype(np.float32)
    for c in range(1, a.shape[-1]):
        out += a[..., c]
    out *= np.float32(1.0 / a.shape[-1])
    return out


def _solidity(mask: np.ndarray) -> float:
    """Area over convex-hull area (1 for convex shapes)."""
    hull = float(convex_hull_image(mask).sum())
    return float(mask.sum()) / hull if hull > 0 else 0.0


def _slice_box(
    sl: tuple[slice, slice], y0: int, x0: int, factor: int, shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A crop's slice (work pixels, offset ``y0, x0``) -> ``(x, y, w, h)`` in the input frame."""
    return _frame_box(
        y0 + sl[0].start, x0 + sl[1].start, y0 + sl[0].stop - 1, x0 + sl[1].stop - 1, factor, shape
    )


def _frame_box(
    ymin: int, xmin: int, ymax: int, xmax: int, factor: int, shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Inclusive work-pixel bounds -> ``(x, y, w, h)`` in the input frame, clipped to it."""
    h, w = shape
    x0, y0 = float(xmin * factor), float(ymin * factor)
    x1, y1 = float(min((xmax + 1) * factor, w)), float(min((ymax + 1) * factor, h))
    return (x0, y0, x1 - x0, y1 - y0)
