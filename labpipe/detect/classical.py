"""Classical specimen detector: background/foreground segmentation on a plain background.

No weights. Finds beetles (and other arthropods) lying on filter paper in a Petri dish, or on the
floor of a microplate well, in a reduced-resolution *overview* of the plate image.

Pipeline (each step a pure function in :mod:`labpipe.detect.dish`, :mod:`~labpipe.detect.background`,
:mod:`~labpipe.detect.significance`, :mod:`~labpipe.detect.segment` and
:mod:`~labpipe.detect.extent`, tested alone):

1. Work resolution: the overview is block-averaged by an integer factor so that the smallest
   specimen still spans ``min_work_px`` (16) pixels, or at least 8 where the longer side would
   otherwise exceed 2560 px (:func:`to_float_rgb`, :func:`downsample_mean`).
2. Dish (:func:`~labpipe.detect.dish.find_dish`, on a <= 256 px luminance image): a bright disc in
   a dark surround, else a well-supported large circle (a well wall), else the whole image minus a
   thin border (logged at debug level). The rim and its inner shade are excluded: a Petri dish's
   wall is measured direction by direction and the search goes up to it
   (:func:`~labpipe.detect.dish.wall_limits`), at most ``rim_fraction`` of the radius inside.
3. Polarity (:func:`~labpipe.detect.significance.choose_polarity`): on light paper only darkening
   and colour count (anything brighter is glare); on a dark bottom a second pass finds pale
   animals on the image mirrored by ratio (:func:`mirror_for_pale`: an animal k times brighter
   than the bottom becomes k times darker than it), and the two passes' boxes are merged
   (non-maximum suppression).
4. Background (:meth:`ClassicalDetector._background`): block medians around a quadratic lighting
   trend (:func:`~labpipe.detect.background.estimate_background`); where specimens cover most of
   the paper, the paper measured between them. In a well (its wall found as a circle) the
   concentric bands of shading are first modelled ring by ring around its centre
   (:func:`~labpipe.detect.background.radial_profile`) and the blocks work on what is left.
5. Significance (:mod:`~labpipe.detect.significance`): darkening and colour change after
   flat-field division (:func:`~labpipe.detect.segment.foreground_strength`); seeds where the
   strength median-filtered over half the smallest specimen exceeds ``k_seed`` times a *local*
   noise map (and a floor for colour noise); objects grown from them to ``edge_fraction`` of each
   seed's own peak (its visible edge, not its shadow); small holes (reflections) filled. The noise
   is measured around each block's own paper level, not around the background estimate, which
   sits a few percent darker where specimens cover part of a block.
6. Bodies (:func:`~labpipe.detect.segment.find_bodies`): an opening relative to each blob's own
   thickness keeps bodies and drops legs, antennae and fibres; parts of clearly different colours
   stay apart, and a small animal that the opening took for a larger one's leg is given back when
   its cuticle's colour is unlike that body's (:func:`~labpipe.detect.segment.colour_distinct_parts`;
   it never joins that body as a wing). Touching bodies are split by distance transform +
   watershed, guarded against cutting one specimen in pieces
   (:func:`~labpipe.detect.segment.split_touching`); legs and antennae go back to the body they
   grow from (:func:`~labpipe.detect.segment.assign_to_bodies`).
7. Score (:func:`detection_score`): the weakest of a size-aware contrast (more asked of a body at
   the searched region's border), a peak contrast (more asked of a grey body on a light floor:
   :func:`grey_peak`), thickness, solidity, elongation and focus (:func:`focus_ratio`: a blurred
   spot is out of the focal plane); candidates below ``score_threshold`` are dropped.
8. Extent (:mod:`~labpipe.detect.extent`): each box is set again on the pixels of the given array,
   the body plus the thin legs and antennae connected to it; a small piece of a larger animal's
   colour lying inside its box joins it (:func:`absorb_fragments`), and so does a far fainter part
   touching it, a wing cut off at its base (:func:`join_faint_parts`).

Sizes: ``min_size_um`` is used when the scale of the array is known (``um_per_px``); otherwise
``min_size_px`` is used **in the pixels of the array given to** :meth:`ClassicalDetector.detect` (the
overview), not of the full-resolution image: the caller converts it (``min_size_px`` from the
configuration is in full-resolution pixels, so the caller divides it by the overview's reduction
factor). Boxes are returned in the pixel frame of the given array; the caller scales them to full
resolution with :meth:`~labpipe.detect.base.Detection.scaled`.

Known limits: two elongated specimens pressed side by side along their length, or touching head
to tail in line, are one blob to the distance transform and are usually reported as one; a small
specimen of the same colour touching a much larger one may be taken for its leg; a leg or head
joined to its body by a thin, faint line may be boxed on its own. Pale, translucent specimens on a
white background are barely darker than it and may score below the threshold. The detector cannot
tell a loose leg or wing as thick as a small body from a specimen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from skimage.morphology import convex_hull_image

from labpipe.config import DetectorConfig
from labpipe.detect.background import estimate_background, radial_profile
from labpipe.detect.base import Detection
from labpipe.detect.boxes import nms
from labpipe.detect.dish import Dish, find_dish, resize_mask
from labpipe.detect.extent import appendage_mask, enlarge, grow_thin_appendages, refine_box
from labpipe.detect.segment import (
    assign_to_bodies,
    colour_distinct_parts,
    fill_small_holes,
    find_bodies,
    foreground_strength,
    half_normal_noise,
    split_touching,
)
from labpipe.detect.significance import (
    choose_polarity,
    evidence,
    grow_from_seeds,
    local_noise,
    object_strength,
)

__all__ = [
    "Candidate",
    "ClassicalDetector",
    "ClassicalResult",
    "absorb_fragments",
    "body_tint",
    "detection_score",
    "downsample_mean",
    "edge_sharpness",
    "focus_ratio",
    "grey_peak",
    "join_faint_parts",
    "to_float_rgb",
    "touching_regions",
]

log = logging.getLogger(__name__)

ALGORITHM = "classical-2"


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


def mirror_for_pale(image: np.ndarray, level: float) -> np.ndarray:
    """A pale animal on a dark bottom turned into a dark one on a light floor, contrast for contrast.

    Light is multiplicative (illumination times reflectance), so flat-field division measures an
    animal by its ratio to the background. An animal ``k`` times brighter than the bottom must come
    out ``k`` times darker than it, as a dark animal on paper would: ``level / image`` (per
    channel) does that, where ``1 - image`` does not (a springtail 2.2 times brighter than a bottom
    at 0.2 became only 30 % darker than the inverted bottom, below the peak a dark animal needs).
    ``level`` sets where the bottom lands (``b * (1 - b)`` puts a bottom at ``b`` where inversion
    would, leaving room above it for its noise); values are clipped to [0, 1] (anything darker
    than ``level`` is no pale animal).

    Examples
    --------
    >>> bottom, springtail = np.float32(0.2), np.float32(0.44)
    >>> m = mirror_for_pale(np.array([bottom, springtail]), 0.16)
    >>> round(float(1 - m[1] / m[0]), 3)  # as dark as a dark animal with ratio 0.2 / 0.44
    0.545
    >>> round(float(1 - (1 - springtail) / (1 - bottom)), 3)  # what inversion gave
    0.3
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1]; given {level}")
    x = np.asarray(image, dtype=np.float32)
    return np.clip(np.float32(level) / np.maximum(x, np.float32(1e-3)), 0.0, 1.0).astype(np.float32)


def _gate(ratio: float) -> float:
    """``r**2 / (1 + r**2)``: 0 at 0, 0.5 at 1, towards 1 above (a logistic in ``log r``)."""
    r2 = max(float(ratio), 0.0) ** 2
    return r2 / (1.0 + r2)


def detection_score(
    evidence: float,
    peak: float,
    thickness: float,
    solidity: float,
    elongation: float,
    *,
    min_evidence: float = 2.0,
    min_peak: float = 0.25,
    min_thickness: float = 0.3,
    min_solidity: float = 0.5,
    max_elongation: float = 10.0,
    focus: float | None = None,
    min_focus: float = 1.0,
) -> float:
    """Detection score in [0, 1]: the weakest of five cues (six with ``focus``), each 0.5
    exactly at its limit.

    ``score = min(g(evidence / min_evidence), g(peak / min_peak), g(thickness / min_thickness),
    g(solidity / min_solidity), g(max_elongation / elongation))`` with ``g(r) = r^2 / (1 + r^2)``,
    so a score of at least 0.5 means every cue is on the right side of its limit:

    * ``evidence`` (:func:`~labpipe.detect.significance.evidence`): the object stands out from the
      local texture, more easily the larger it is (the Rose criterion);
    * ``peak``: its strongest tenth is at least ``min_peak`` darker or more coloured than the paper
      (an animal has eyes and sclerites; a stain, a faint shadow or a fold of the sheet has not);
    * ``thickness``: its body's largest inscribed diameter over the smallest specimen's length (a
      loose leg, a fibre or a hair is thinner);
    * ``solidity``: area over convex hull (crumpled texture and fragments are ragged);
    * ``elongation``: axis ratio from second moments (a seam or a fibre is a line);
    * ``focus``, when given (:func:`focus_ratio`): an animal on the floor or the paper is in
      focus (edges a few pixels wide), or so large that a little blur is a small part of it; a
      spot that fades over many pixels and a good part of its own size is out of the focal plane
      (a drop, a smudge on the glass, something beyond a well's wall).

    Examples
    --------
    >>> round(detection_score(2.0, 0.25, 0.3, 0.5, 10.0), 3)
    0.5
    >>> detection_score(8.0, 0.8, 1.0, 0.9, 2.0) > 0.75
    True
    >>> detection_score(8.0, 0.1, 1.0, 0.9, 2.0) < 0.2  # a faint stain, however large
    True
    >>> detection_score(8.0, 0.8, 1.0, 0.9, 2.0, focus=0.4) < 0.2  # a blurred spot
    True
    """
    score = min(
        _gate(evidence / min_evidence),
        _gate(peak / min_peak),
        _gate(thickness / min_thickness),
        _gate(solidity / min_solidity),
        _gate(max_elongation / max(elongation, 1e-9)),
    )
    if focus is not None:
        score = min(score, _gate(focus / min_focus))
    return score


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
    """50th, 75th and 90th percentiles of the body's foreground strength."""
    evidence: float = 0.0
    """Size-aware detection statistic (:func:`~labpipe.detect.significance.evidence`)."""
    peak: float = 0.0
    """90th percentile of the body's foreground strength (its strongest parts: eyes, sclerites)."""
    number: int = 0
    """1-based index among the candidates of one image (its label in the regions image)."""
    colour: tuple[float, ...] = ()
    """Mean colour of the body (work image, 0-1; mirrored in a pale-animal pass)."""
    sharpness: float = 0.0
    """Steepest edges over the peak strength, per work pixel (:func:`edge_sharpness`)."""
    distinct: bool = False
    """True when the body is a small animal of its own colour found against a larger one
    (:func:`~labpipe.detect.segment.colour_distinct_parts`); it never joins that one as a wing."""
    tint: float = 0.0
    """How coloured the body is against its background: the spread of its mean per-channel ratio
    to the background (:func:`body_tint`); 0 for a grey, neutral darkening."""


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
    """With ``keep_masks``: ``foreground`` and ``seeds`` (bool), and ``bodies`` (int32: each
    candidate's region under its number), at work resolution."""
    polarity: str = "dark"
    """``"dark"`` (dark animals on light paper), ``"light"`` (pale animals on a dark bottom) or
    ``"both"`` (a dark bottom holding both)."""


@dataclass(frozen=True)
class _Pass:
    """What one polarity pass of :meth:`ClassicalDetector.analyse` found."""

    candidates: list[Candidate]
    kept: list[Candidate]
    objects: np.ndarray
    seeds: np.ndarray
    regions: np.ndarray
    thresholds: tuple[float, float]
    noise: tuple[float, float]


@dataclass(frozen=True)
class _Maps:
    """The work-resolution images :meth:`ClassicalDetector._objects` measures candidates on."""

    work: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray
    seeds: np.ndarray
    seed_threshold: np.ndarray
    search: np.ndarray
    background: np.ndarray | None = None
    grey_peak_extra: float = 0.0
    """More peak asked of a grey body (:func:`grey_peak`): on a light floor only (a translucent
    membrane darkens it a little; on a dark bottom pale animals are grey and bright)."""


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
        Detections scoring below this are dropped (see :func:`detection_score`).
    split_touching : bool
        Separate touching specimens (distance transform + watershed, guarded).
    max_size_um : float
        Largest specimen expected; sets the background model's block size (scale known). Without
        a scale a quarter of the shorter image side is used.
    polarity : str
        ``"auto"`` (chosen per image), ``"dark"`` (dark animals on light paper), ``"light"`` (pale
        animals on a dark bottom) or ``"both"``.

    Attributes
    ----------
    version : str
        ``classical-2@<hash of the settings>``.

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
        min_size_um: float = 300.0,
        min_size_px: int = 16,
        score_threshold: float = 0.5,
        split_touching: bool = True,
        *,
        max_size_um: float = 12_000.0,
        polarity: str = "auto",
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
        self.polarity = polarity
        if polarity not in ("auto", "dark", "light", "both"):
            raise ValueError(f"polarity must be 'auto', 'dark', 'light' or 'both'; given {polarity!r}")
        # Constants (see the module and function docstrings); all are in the version hash.
        self.min_work_px = 16.0
        self.border_fraction = 0.005
        self.rim_fraction = 0.07  # of a found dish's radius: the glass wall and its inner shade (at most)
        self.dish_wall = "measured"  # a dish's wall: "measured" (dish.wall_limits) or "fixed" (rim_fraction)
        self.min_background = 0.03
        self.chroma_weight = 1.5
        self.noise_block_fraction = 4.0  # noise map blocks, in smallest-specimen lengths
        self.radial_background = True
        self.ring_fraction = 0.1  # ring width of a well's shading profile, in smallest-specimen lengths
        self.ring_min_radius = 1.0  # rings nearer a well's centre are not trusted (smallest-specimen lengths)
        self.median_fraction = 0.5  # median window for seeds, in smallest-specimen lengths
        self.k_seed = 5.0
        self.seed_floor = 0.04
        self.k_edge = 3.0
        self.edge_fraction = 0.35
        self.body_radius_fraction = 0.15
        self.body_length_fraction = 0.7
        self.relative_radius = 0.2
        self.colour_distance = 0.15
        self.neck_ratio = 0.6
        self.thin_ratio = 0.0
        self.split_solidity = 0.95
        self.min_evidence = 2.0
        self.min_peak = 0.25
        self.thickness_floor = 0.5
        self.min_solidity = 0.5
        self.max_elongation = 10.0
        self.edge_evidence_factor = 3.0
        self.paper_tolerance = 0.1
        self.crowding_ratio = 0.85
        self.noise_paper_cut: float | None = 0.1  # noise measured around the paper's level (local_noise)
        self.refine = True
        self.appendage_reach = 0.6  # beyond the work box, in box lengths
        self.k_appendage = 3.0
        self.appendage_fraction = 0.25
        self.line_length = 25  # pixels of the image given; 0: no line filter for faint legs
        self.k_line = 6.0
        self.line_fraction = 0.08
        self.grey_peak_extra = 0.4  # more peak asked of a grey body on a light floor
        self.tint_reference = 0.1  # body_tint from which a body counts as coloured
        self.faint_ratio = 0.6  # a touching part this much fainter is a wing
        self.pale_contrast = "ratio"  # pale animals on a dark bottom: "ratio" (mirror_for_pale) or "inverted"
        self.printed_marks_min = 4  # this many identical marks in a row are printed, not animals (0: off)
        self.distinct_colour = 0.45  # a small part this unlike the body it touches is another animal
        self.min_sharpness = 0.12  # in focus: edges at most about 8 work pixels wide ...
        self.min_focus = 8.0  # ... or the body at least this many edge widths across
        self.version: str = self._version()

    def _version(self) -> str:
        """``classical-2@<8 hex digits>``: the algorithm and a hash of every setting that changes
        its output (stored with every specimen)."""
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:8]
        return f"{ALGORITHM}@{digest}"

    @property
    def settings(self) -> dict[str, object]:
        """Every setting that changes the output (recorded in the detector's registry row)."""
        return {
            "min_size_um": self.min_size_um,
            "min_size_px": self.min_size_px,
            "score_threshold": self.score_threshold,
            "split_touching": self.split_touching,
            "max_size_um": self.max_size_um,
            "polarity": self.polarity,
            **{
                name: getattr(self, name)
                for name in (
                    "min_work_px",
                    "border_fraction",
                    "rim_fraction",
                    "min_background",
                    "chroma_weight",
                    "noise_block_fraction",
                    "radial_background",
                    "ring_fraction",
                    "ring_min_radius",
                    "median_fraction",
                    "k_seed",
                    "seed_floor",
                    "k_edge",
                    "edge_fraction",
                    "body_radius_fraction",
                    "body_length_fraction",
                    "relative_radius",
                    "colour_distance",
                    "neck_ratio",
                    "thin_ratio",
                    "split_solidity",
                    "min_evidence",
                    "min_peak",
                    "thickness_floor",
                    "min_solidity",
                    "max_elongation",
                    "edge_evidence_factor",
                    "paper_tolerance",
                    "crowding_ratio",
                    "noise_paper_cut",
                    "refine",
                    "appendage_reach",
                    "k_appendage",
                    "appendage_fraction",
                    "line_length",
                    "k_line",
                    "line_fraction",
                    "faint_ratio",
                    "distinct_colour",
                    "printed_marks_min",
                    "pale_contrast",
                    "dish_wall",
                    "grey_peak_extra",
                    "tint_reference",
                    "min_sharpness",
                    "min_focus",
                )
            },
        }

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
            polarity=config.polarity,
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
        # with a scale, nothing longer than 1.5 x the largest specimen is one (a dish rim, a
        # shadow across the plate); without one, an animal may fill the picture
        longest = 1.5 * max_len / factor if um_per_px else float("inf")
        timings = {"prepare": time.perf_counter() - t0}

        t = time.perf_counter()
        small_f = max(1, -(-max(wh, ww) // 256))
        small = downsample_mean(_channel_mean(work), small_f)
        dish = find_dish(
            small,
            border_fraction=self.border_fraction,
            rim_fraction=self.rim_fraction,
            measure_wall=self.dish_wall == "measured",
        )
        if not dish.found:
            log.debug("no dish found: searching the whole image minus a border (%s)", dish.method)
        search = resize_mask(dish.mask, (wh, ww))
        polarity = self.polarity
        if polarity == "auto":
            polarity = choose_polarity(small, resize_mask(search, small.shape))
        timings["dish"] = time.perf_counter() - t

        # Dark animals on light paper: only darkening and colour count (anything brighter than
        # white paper is glare). On a dark bottom, pale animals stand out by brightening and dark
        # ones by darkening: both passes run and their boxes are merged.
        # a well's wall found: its concentric shading is modelled ring by ring around its centre
        center = None
        if dish.method == "hough-circle" and dish.center is not None and self.radial_background:
            center = ((dish.center[0] + 0.5) * small_f - 0.5, (dish.center[1] + 0.5) * small_f - 0.5)
        passes = {"dark": ["dark"], "light": ["light"], "both": ["dark", "light"]}[polarity]
        pale_level = 0.0
        if "light" in passes:
            lum = _channel_mean(work)
            inside = lum[search] if search.any() else lum.ravel()
            bottom = float(np.median(inside[:: max(1, inside.size // 250_000)]))
            pale_level = float(np.clip(bottom * (1.0 - bottom), 0.01, 0.25))
        results: list[_Pass] = []
        for direction in passes:
            area = search
            if results:
                # what the first pass found is no background to the second (a dark beetle on a
                # dark bottom would pass for bright noise once the image is inverted)
                area = search & ~ndi.binary_dilation(results[-1].objects, iterations=2)
            results.append(
                self._pass(
                    rgb,
                    work,
                    area,
                    direction,
                    min_w,
                    max_w,
                    factor,
                    (h, w),
                    timings,
                    polarity,
                    longest,
                    center,
                    pale_level,
                )
            )
        t = time.perf_counter()
        candidates = [c for r in results for c in r.candidates]
        # the same animal found by both polarity passes is kept once, at its better score
        found = [c for r in results for c in r.kept]
        kept = [found[i] for i in nms([c.box for c in found], [c.score for c in found], 0.5)] if found else []
        if self.printed_marks_min > 0 and len(kept) >= self.printed_marks_min:
            marks = printed_marks(kept, min_count=self.printed_marks_min)
            if marks:
                log.debug("left out %d printed marks (a scale card, a ruler)", len(marks))
                kept = [c for i, c in enumerate(kept) if i not in marks]
        detections = [Detection(*c.box, score=c.score) for c in kept]
        detections.sort(key=lambda d: -d.score)
        timings["merge"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        main = results[-1]
        masks: dict[str, np.ndarray] = {}
        if keep_masks:
            masks = {"foreground": main.objects, "seeds": main.seeds, "bodies": main.regions}
        return ClassicalResult(
            detections=detections,
            candidates=candidates,
            dish=dish,
            factor=factor,
            thresholds=main.thresholds,
            noise=main.noise,
            timings=timings,
            masks=masks,
            polarity=polarity,
        )

    def _pass(
        self,
        rgb: np.ndarray,
        work: np.ndarray,
        search: np.ndarray,
        direction: str,
        min_w: float,
        max_w: float,
        factor: int,
        shape: tuple[int, int],
        timings: dict[str, float],
        polarity: str = "dark",
        longest: float = float("inf"),
        center: tuple[float, float] | None = None,
        pale_level: float = 0.25,
    ) -> _Pass:
        """One polarity: background, significance, objects, scores and extents. With ``center``
        (a well's), the background is the rings' profile (:func:`radial_profile`) times the usual
        estimate made on the image divided by it."""
        wh, ww = work.shape[:2]
        if direction == "light":
            work = self._pale(work, pale_level)  # pale animals on a dark bottom: the same rules
        t = time.perf_counter()
        # Blocks of a quarter of the largest specimen, but at least 8 across the image's short side.
        block = max(4, min(round(max_w / 4), round(min(wh, ww) / 8)))
        rings = None
        if center is not None:
            rings = radial_profile(
                work,
                search,
                center,
                ring=max(1.0, self.ring_fraction * min_w),
                min_radius=self.ring_min_radius * min_w,
            )
            if np.isnan(rings).any():
                rings = None
        flat = work if rings is None else work / np.maximum(rings, np.float32(1e-6))
        if polarity == "dark":
            bg = self._background(flat, search, block, min_w)
        else:
            # on a dark bottom pale animals and pale debris are brighter than it: a high quantile
            # would be theirs, so the plain median is the bottom's level
            bg = estimate_background(flat, search, block=block)
        if rings is not None:
            bg = bg * rings
        timings["background"] = timings.get("background", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        strength = foreground_strength(work, bg, chroma_weight=self.chroma_weight)
        bg_lum = _channel_mean(bg)
        search = search & (bg_lum > np.float32(self.min_background))
        if not search.any():
            log.debug("no lit background to search against")
            nothing = np.zeros((wh, ww), dtype=bool)
            return _Pass([], [], nothing, nothing, np.zeros((wh, ww), np.int32), (np.inf, np.inf), (0.0, 0.0))
        signed = 1.0 - _channel_mean(work) / np.maximum(bg_lum, np.float32(1e-6))
        noise_block = max(8, round(self.noise_block_fraction * min_w))
        fine = ndi.gaussian_filter(strength, 1.0)
        sigma_fine = local_noise(
            ndi.gaussian_filter(signed, 1.0), search, noise_block, paper_cut=self.noise_paper_cut
        )
        # The seed map is made where a 3 x 3 median spans half the smallest specimen (a median
        # filter's cost grows with its window's area; seeds are only located coarsely).
        q = max(1, round(self.median_fraction * min_w / 3))
        median_size = max(3, round(self.median_fraction * min_w / q)) | 1
        coarse = enlarge(object_strength(downsample_mean(strength, q), median_size), q, (wh, ww))
        sigma_coarse = enlarge(
            local_noise(
                object_strength(downsample_mean(signed, q), median_size),
                resize_mask(search, (-(-wh // q), -(-ww // q))),
                max(8, noise_block // q),
                paper_cut=self.noise_paper_cut,
            ),
            q,
            (wh, ww),
        )
        # Colour noise (a dim dish bottom: a few grey levels are many percent of its channels)
        # is in the strength but not in the luminance noise: a tenth of the searched pixels are
        # paper even on a crowded plate, so the strength's tenth percentile measures it.
        floor_coarse = max(self.seed_floor, self.k_seed * _low_percentile_noise(coarse, search))
        floor_fine = self.k_edge * _low_percentile_noise(fine, search)
        seed_threshold = np.maximum(np.float32(floor_coarse), np.float32(self.k_seed) * sigma_coarse)
        seeds = (coarse > seed_threshold) & search
        objects = grow_from_seeds(
            fine,
            seeds,
            coarse,
            np.maximum(np.float32(floor_fine), np.float32(self.k_edge) * sigma_fine),
            edge_fraction=self.edge_fraction,
            mask=search,
        )
        objects = fill_small_holes(objects, round((min_w / 2) ** 2))
        timings["foreground"] = timings.get("foreground", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        regions = np.zeros(objects.shape, dtype=np.int32)
        grey_extra = self.grey_peak_extra if direction == "dark" else 0.0
        maps = _Maps(work, fine, coarse, seeds, seed_threshold, search, bg, grey_extra)
        candidates = self._objects(objects, maps, min_w, factor, shape, regions, longest)
        timings["objects"] = timings.get("objects", 0.0) + time.perf_counter() - t

        t = time.perf_counter()
        kept = [c for c in candidates if c.score >= self.score_threshold]
        if self.refine and kept:
            kept = [self._refine(c, rgb, bg, regions, search, factor, direction, pale_level) for c in kept]
        if self.faint_ratio > 0 and len(kept) > 1:
            kept = join_faint_parts(kept, touching_regions(regions), faint_ratio=self.faint_ratio)
        kept = absorb_fragments(kept, colour_distance=self.colour_distance)
        timings["extent"] = timings.get("extent", 0.0) + time.perf_counter() - t
        med = float(np.median(signed[search][:: max(1, int(search.sum()) // 250_000)]))
        return _Pass(
            candidates,
            kept,
            objects,
            seeds,
            regions,
            (float(np.median(seed_threshold[search])), float(np.median(sigma_fine[search]))),
            (med, float(np.median(sigma_coarse[search]))),
        )

    def _objects(
        self,
        objects: np.ndarray,
        maps: _Maps,
        min_w: float,
        factor: int,
        shape: tuple[int, int],
        body_labels: np.ndarray,
        longest: float = float("inf"),
    ) -> list[Candidate]:
        """Bodies, split where touching, with their appendages; scored (work-pixel geometry).

        ``body_labels`` receives each candidate's whole region (body and appendages) under its
        candidate number (1-based, in the order returned), for the extent step.
        """
        labels, n = ndi.label(objects)
        if n == 0:
            return []
        radius = max(1.0, self.body_radius_fraction * min_w)
        unit_area = min_w**2
        # Bounds that cost one pass over the image: a component whose strongest pixel is below the
        # peak limit, or whose seeds could not reach the evidence limit even at their strongest,
        # holds no body that could score 0.5; it is not analysed (texture, stains).
        seeded = maps.seeds & (labels > 0)
        best_ratio = np.zeros(n + 1)
        np.maximum.at(best_ratio, labels[seeded], maps.coarse[seeded] / maps.seed_threshold[seeded])
        best_ratio = best_ratio[1:]
        seed_area = np.bincount(labels[maps.seeds], minlength=n + 1)[1:]
        inside = labels > 0
        strongest = np.zeros(n + 1)
        np.maximum.at(strongest, labels[inside], maps.fine[inside])
        strongest = strongest[1:]
        hopeless = (best_ratio * np.sqrt(seed_area / unit_area) < self.min_evidence) | (
            strongest < self.min_peak
        )
        if self.score_threshold < 0.5:  # a lower threshold asks for the weak ones too
            hopeless[:] = False
        out: list[Candidate] = []
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            if (
                sl is None
                or hopeless[i - 1]
                or max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) < min_w
            ):
                continue
            comp = labels[sl] == i
            colour = maps.work[sl]
            parts = find_bodies(
                comp,
                min_length=self.body_length_fraction * min_w,
                min_radius=radius,
                relative_radius=self.relative_radius,
                colour=colour,
                colour_distance=self.colour_distance,
            )
            if parts.max() == 0:
                continue
            n_found = int(parts.max())
            if self.distinct_colour > 0:
                extra = colour_distinct_parts(
                    comp,
                    parts,
                    colour,
                    min_radius=radius,
                    min_length=self.body_length_fraction * min_w,
                    colour_distance=self.distinct_colour,
                )
                parts = np.where(extra > 0, extra + n_found, parts).astype(np.int32)
            s_fine = maps.fine[sl]
            local = (
                np.hypot(*np.gradient(s_fine)),
                ndi.binary_erosion(maps.search[sl], iterations=2, border_value=1),
            )
            # A part set apart by its colour that then scores too low to be kept is no animal: it
            # is given back to the body it touches (its pixels there are that body's leg).
            pending = self._score_parts(comp, parts, n_found, sl, local, maps, min_w, factor, shape, longest)
            weak = {src for _, _, src, c in pending if c.distinct and c.score < self.score_threshold}
            if weak:
                parts = np.where(np.isin(parts, sorted(weak)), 0, parts).astype(np.int32)
                pending = self._score_parts(
                    comp, parts, n_found, sl, local, maps, min_w, factor, shape, longest
                )
            for where, region, _, cand in pending:
                body_labels[where][region] = len(out) + 1
                out.append(dataclasses.replace(cand, number=len(out) + 1))
        return out

    def _score_parts(
        self,
        comp: np.ndarray,
        parts: np.ndarray,
        n_found: int,
        sl: tuple[slice, slice],
        local: tuple[np.ndarray, np.ndarray],
        maps: _Maps,
        min_w: float,
        factor: int,
        shape: tuple[int, int],
        longest: float,
    ) -> list[tuple[tuple[slice, slice], np.ndarray, int, Candidate]]:
        """The scored candidates of one component ``comp`` (at ``sl``) whose bodies are ``parts``
        (labels above ``n_found`` are :func:`~labpipe.detect.segment.colour_distinct_parts`),
        split where touching: per candidate, its region (image slices and mask), the part it came
        from and the candidate (``number`` still 0). ``local``: the component's slope of the fine
        strength and the searched region's interior."""
        unit_area = min_w**2
        colour = maps.work[sl]
        bodies = np.zeros(comp.shape, dtype=np.int32)
        source_of: dict[int, int] = {}
        pending: list[tuple[tuple[slice, slice], np.ndarray, int, Candidate]] = []
        split_of: dict[int, bool] = {}
        nb = 0
        for j, psl in enumerate(ndi.find_objects(parts), start=1):
            if psl is None:
                continue
            part = parts[psl] == j
            if self.split_touching and _solidity(part) < self.split_solidity:
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
                source_of[q] = j
            nb += k
        owners = assign_to_bodies(comp, bodies)
        s_fine, s_coarse = maps.fine[sl], maps.coarse[sl]
        slope, inner = local
        seeds, seed_threshold = maps.seeds[sl], maps.seed_threshold[sl]
        body_slices = ndi.find_objects(bodies, max_label=nb)
        owner_slices = ndi.find_objects(owners, max_label=nb)
        for q, (bsl, osl) in enumerate(zip(body_slices, owner_slices, strict=True), start=1):
            if bsl is None or osl is None:
                continue
            bmask = bodies[bsl] == q
            blen = max(bsl[0].stop - bsl[0].start, bsl[1].stop - bsl[1].start)
            olen = max(osl[0].stop - osl[0].start, osl[1].stop - osl[1].start)
            if olen < min_w or blen > longest:
                continue
            by, bx = np.nonzero(bmask)
            bd = ndi.distance_transform_edt(np.pad(bmask, 1))
            thickness = 2.0 * float(bd.max()) / min_w
            if by.size >= 3:
                ev = np.sort(np.linalg.eigvalsh(np.cov(np.stack([by, bx]).astype(np.float64))))
                elongation = float(np.sqrt(max(ev[1], 1e-9) / max(ev[0], 1e-9)))
            else:
                elongation = 1.0
            solidity = _solidity(bmask)
            seeded = bmask & seeds[bsl]
            if seeded.any():
                contrast = float(np.median(s_coarse[bsl][seeded] / seed_threshold[bsl][seeded]))
                seed_area = float(seeded.sum())
            else:
                contrast, seed_area = 0.0, 0.0
            strength_body = s_fine[bsl][bmask]
            pct = np.percentile(strength_body, [50.0, 75.0, 90.0])
            peak = float(pct[2])
            evid = evidence(contrast, seed_area, unit_area)
            edge = bool((bmask & ~inner[bsl]).any())
            # where the body touches the searched region's border (the dish rim, the frame),
            # the background is extrapolated from partly covered blocks: ask for more
            judged = evid / self.edge_evidence_factor if edge else evid
            body_colour = tuple(float(v) for v in colour[bsl][bmask].mean(axis=0))
            tint = 0.0
            if maps.background is not None:
                tint = body_tint(body_colour, maps.background[sl][bsl][bmask].mean(axis=0))
            sharpness = edge_sharpness(slope[osl], owners[osl] == q, peak)
            score = detection_score(
                judged,
                peak,
                thickness,
                solidity,
                elongation,
                focus=focus_ratio(
                    sharpness,
                    float(np.sqrt(by.size)),
                    min_sharpness=self.min_sharpness,
                    min_focus=self.min_focus,
                ),
                min_evidence=self.min_evidence,
                min_peak=grey_peak(
                    self.min_peak,
                    tint,
                    extra=maps.grey_peak_extra,
                    tint_reference=self.tint_reference,
                ),
                min_thickness=self.thickness_floor,
                min_solidity=self.min_solidity,
                max_elongation=self.max_elongation,
            )
            y0, x0 = sl[0].start, sl[1].start
            pending.append(
                (
                    (
                        slice(y0 + osl[0].start, y0 + osl[0].stop),
                        slice(x0 + osl[1].start, x0 + osl[1].stop),
                    ),
                    owners[osl] == q,
                    source_of[q],
                    Candidate(
                        box=_slice_box(osl, y0, x0, factor, shape),
                        body_box=_slice_box(bsl, y0, x0, factor, shape),
                        body_area=float(by.size * factor * factor),
                        length_ratio=float(blen / min_w),
                        solidity=solidity,
                        contrast=contrast,
                        score=score,
                        split=split_of.get(q, False),
                        distinct=source_of[q] > n_found,
                        thickness=thickness,
                        elongation=elongation,
                        edge=edge,
                        strength_percentiles=(float(pct[0]), float(pct[1]), float(pct[2])),
                        evidence=evid,
                        peak=peak,
                        number=0,
                        colour=body_colour,
                        tint=tint,
                        sharpness=sharpness,
                    ),
                )
            )
        return pending

    def _background(self, work: np.ndarray, search: np.ndarray, block: int, min_w: float) -> np.ndarray:
        """The paper's colour per pixel, robust to crowding (light paper: nothing but glare is
        brighter than it).

        The usual estimate takes block medians (:func:`~labpipe.detect.background.estimate_background`).
        Where specimens cover most of a dish, a block's median is a beetle; its 85th percentile
        is still paper. Where the median estimate is far (15 %) darker than the 85th-percentile
        one, the dish is crowded there: the background is estimated again from the pixels that
        are not clearly darker than the 85th-percentile estimate, block medians of paper alone.
        Elsewhere the median estimate stands (on a textured sheet the 85th percentile is the
        texture's bright side, not the paper's level).
        """
        usual = estimate_background(work, search, block=block)
        high = estimate_background(work, search, block=block, quantile=85.0)
        crowded = _channel_mean(usual) < np.float32(self.crowding_ratio) * _channel_mean(high)
        if not (crowded & search).any():
            return usual
        ratio = _channel_mean(work) / np.maximum(_channel_mean(high), np.float32(1e-6))
        covered = ndi.binary_dilation(
            ratio < np.float32(1.0 - self.paper_tolerance), iterations=max(1, round(min_w / 8))
        )
        paper = search & ~covered
        if paper.sum() < 0.05 * max(int(search.sum()), 1):
            return np.where(crowded[..., None], high, usual)
        measured = estimate_background(work, paper, block=block, min_coverage=0.1)
        return np.where(crowded[..., None], measured, usual)

    def _thin_appendages(
        self,
        strength: np.ndarray,
        found: np.ndarray,
        cell: np.ndarray,
        paper: np.ndarray,
        sigma: float,
        peak: float,
    ) -> np.ndarray:
        return grow_thin_appendages(
            strength,
            found,
            cell,
            paper,
            sigma,
            length=self.line_length,
            k_noise=self.k_line,
            floor=self.line_fraction * peak,
            max_growth=self.appendage_reach,
        )

    def _pale(self, image: np.ndarray, level: float) -> np.ndarray:
        """The image of a light pass: pale animals turned dark (:func:`mirror_for_pale`, or the
        plain inversion ``1 - image`` of classical-2 before it)."""
        if self.pale_contrast == "inverted":
            return np.float32(1.0) - image
        return mirror_for_pale(image, level)

    def _refine(
        self,
        cand: Candidate,
        rgb: np.ndarray,
        bg: np.ndarray,
        regions: np.ndarray,
        search: np.ndarray,
        factor: int,
        polarity: str,
        pale_level: float = 0.25,
    ) -> Candidate:
        """The candidate's box set again on the input array: its body's region plus the thin legs
        and antennae connected to it (:mod:`labpipe.detect.extent`)."""
        h, w = rgb.shape[:2]
        wh, ww = regions.shape
        x, y, bw, bh = cand.box
        grow = int(np.ceil(self.appendage_reach * max(bw, bh) / factor)) + 2
        ry0, rx0 = max(0, int(y // factor) - grow), max(0, int(x // factor) - grow)
        ry1 = min(wh, int(np.ceil((y + bh) / factor)) + grow)
        rx1 = min(ww, int(np.ceil((x + bw) / factor)) + grow)
        local = regions[ry0:ry1, rx0:rx1]
        mine = local == cand.number
        if not mine.any():
            return cand
        # the cell: the searched pixels outside every other candidate's region (and a pixel
        # around it), so a neighbour's legs never widen this box
        others = (local > 0) & ~mine
        cell_work = search[ry0:ry1, rx0:rx1].copy()
        if others.any():
            cell_work &= ~ndi.binary_dilation(others)
        fy0, fx0 = ry0 * factor, rx0 * factor
        fy1, fx1 = min(h, ry1 * factor), min(w, rx1 * factor)
        shape = (fy1 - fy0, fx1 - fx0)
        sub = to_float_rgb(rgb[fy0:fy1, fx0:fx1])
        if polarity == "light":
            sub = self._pale(sub, pale_level)
        bg_full = enlarge(bg[ry0:ry1, rx0:rx1], factor, shape)
        s_full = foreground_strength(sub, bg_full, chroma_weight=self.chroma_weight)
        body = enlarge(mine, factor, shape)
        cell = enlarge(cell_work, factor, shape)
        # the noise of these very pixels, from the paper in the window that is brighter than its
        # background (a half-normal's median is 0.6745 sigma)
        signed = 1.0 - _channel_mean(sub) / np.maximum(_channel_mean(bg_full), np.float32(1e-6))
        paper = enlarge(local == 0, factor, shape)
        sigma = half_normal_noise(signed, paper) if paper.any() else 0.0
        # the body again at this resolution: the work image's pixels straddle its edge
        core = body & (s_full > max(self.k_appendage * sigma, self.edge_fraction * cand.peak))
        if core.any():
            body = core
        threshold = max(self.k_appendage * sigma, self.appendage_fraction * cand.peak)
        mask = appendage_mask(s_full, body, cell, threshold)
        if self.line_length >= 3:
            mask = self._thin_appendages(s_full, mask, cell, paper, sigma, cand.peak)
        box = refine_box(mask, (fy0, fx0))
        if box is None:
            return cand
        return dataclasses.replace(cand, box=box)


def _channel_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the last (colour) axis, written out as sums: several times faster than ``mean``."""
    out = a[..., 0].astype(np.float32)
    for c in range(1, a.shape[-1]):
        out += a[..., c]
    out *= np.float32(1.0 / a.shape[-1])
    return out


def absorb_fragments(
    kept: list[Candidate],
    *,
    inside: float = 0.6,
    area_ratio: float = 0.25,
    colour_distance: float = 0.15,
) -> list[Candidate]:
    """Give pieces of an animal back to it: a small detection lying mostly inside a larger one's
    box, of the same colour, is a leg, an antenna or a wing cut off from its body by a thin,
    faint joint; it is dropped and the larger box grows to cover it.

    A piece joins when at least ``inside`` of its box lies in the other's box, its body is
    smaller than ``area_ratio`` of the other's, and their mean colours differ by at most
    ``colour_distance``. A small animal of
    another colour beside a large one (a pale springtail at a dark beetle's leg) stays on its own.

    Examples
    --------
    >>> big = Candidate((0, 0, 100, 60), (20, 10, 60, 40), 2000.0, 5.0, 0.9, 5.0, 0.9, False)
    >>> big = dataclasses.replace(big, colour=(0.2, 0.1, 0.1))
    >>> leg = dataclasses.replace(big, box=(80, 40, 25, 8), body_area=100.0)
    >>> other = dataclasses.replace(leg, colour=(0.7, 0.7, 0.8))
    >>> [c.box for c in absorb_fragments([big, leg])]
    [(0, 0, 105, 60)]
    >>> len(absorb_fragments([big, other]))
    2
    """
    from labpipe.metrics.detection import intersection_over_first

    order = sorted(kept, key=lambda c: -c.body_area)
    out: list[Candidate] = []
    for c in order:
        host = None
        if out:
            share = intersection_over_first([c.box], [o.box for o in out])[0]
            for k in np.argsort(-share):
                o = out[int(k)]
                if share[k] < inside:
                    break
                same = (
                    len(c.colour) == len(o.colour)
                    and float(np.linalg.norm(np.subtract(c.colour, o.colour))) <= colour_distance
                )
                if c.body_area < area_ratio * o.body_area and same:
                    host = int(k)
                    break
        if host is None:
            out.append(c)
            continue
        o = out[host]
        x0, y0 = min(o.box[0], c.box[0]), min(o.box[1], c.box[1])
        x1 = max(o.box[0] + o.box[2], c.box[0] + c.box[2])
        y1 = max(o.box[1] + o.box[3], c.box[1] + c.box[3])
        out[host] = dataclasses.replace(o, box=(x0, y0, x1 - x0, y1 - y0))
    return out


def body_tint(colour: tuple[float, ...] | np.ndarray, background: tuple[float, ...] | np.ndarray) -> float:
    """How coloured a body is against its background: with ``r_c = colour_c / background_c``,
    ``||r - mean(r)|| / mean(r)``. A grey membrane or a shadow darkens every channel alike (0);
    pigmented cuticle (brown, yellow, green) does not.

    Examples
    --------
    >>> round(body_tint((0.42, 0.45, 0.48), (0.6, 0.64, 0.69)), 3)  # a grey wing on a bluish floor
    0.008
    >>> round(body_tint((0.5, 0.4, 0.3), (0.8, 0.8, 0.8)), 2)  # brown cuticle
    0.35
    """
    c = np.asarray(colour, dtype=np.float64)
    b = np.maximum(np.asarray(background, dtype=np.float64), 1e-6)
    r = c / b
    m = float(r.mean())
    if c.size < 2 or m <= 0:
        return 0.0
    return float(np.linalg.norm(r - m) / m)


def grey_peak(min_peak: float, tint: float, *, extra: float = 0.4, tint_reference: float = 0.1) -> float:
    """The peak strength asked of a body of ``tint`` (:func:`body_tint`): ``min_peak`` for a
    coloured one (``tint >= tint_reference``), up to ``(1 + extra) * min_peak`` for a grey one.

    A faint grey object is a loose wing's membrane, a water mark or a shadow: they darken every
    channel alike and only a little. An animal shows pigment, or dark eyes and sclerites; a grey
    one must be darker to count.

    Examples
    --------
    >>> grey_peak(0.25, 0.0), grey_peak(0.25, 0.05), grey_peak(0.25, 0.2)
    (0.35, 0.3, 0.25)
    """
    if extra < 0 or tint_reference <= 0:
        raise ValueError(f"extra must be >= 0 and tint_reference > 0; given {extra} and {tint_reference}")
    return float(min_peak) * (1.0 + extra * max(0.0, 1.0 - float(tint) / tint_reference))


def focus_ratio(
    sharpness: float, size: float, *, min_sharpness: float = 0.12, min_focus: float = 8.0
) -> float:
    """How far a body is on the in-focus side (1 at the limit): its edges are sharp
    (``sharpness``, :func:`edge_sharpness`, at least ``min_sharpness``: edges at most about
    ``1 / min_sharpness`` pixels wide), or it is so large (``size``: square root of its area, in
    the same pixels) that its edges' width is a small part of it (``size * sharpness`` at least
    ``min_focus``): a large moth near the camera, a little out of focus, is still an animal.

    Examples
    --------
    >>> focus_ratio(0.3, 8.0)  # a small insect, in focus
    2.5
    >>> round(focus_ratio(0.08, 34.0), 2)  # a 34 px spot fading over 12 px: out of focus
    0.67
    >>> round(focus_ratio(0.08, 320.0), 1)  # a large moth, a little blurred
    3.2
    """
    if min_sharpness <= 0 or min_focus <= 0:
        raise ValueError(f"min_sharpness and min_focus must be > 0; given {min_sharpness} and {min_focus}")
    return max(float(sharpness) / min_sharpness, float(sharpness) * float(size) / min_focus)


def edge_sharpness(slope: np.ndarray, region: np.ndarray, peak: float) -> float:
    """How sharp an object's edges are: the 90th percentile of the strength's slope (per pixel)
    on the object and one pixel around it, over its peak strength (about 1 / the edge width in
    pixels). An object in focus has edges a pixel or two wide; a blurred spot (a drop out of the
    focal plane, something beyond the well wall) fades over many.

    Examples
    --------
    >>> x = np.arange(40, dtype=float)
    >>> sharp = np.clip((x - 10) / 2, 0, 1) * np.clip((30 - x) / 2, 0, 1)
    >>> soft = np.clip((x - 5) / 10, 0, 1) * np.clip((35 - x) / 10, 0, 1)
    >>> r = np.zeros((1, 40), bool); r[0, 8:33] = True
    >>> s1 = edge_sharpness(np.abs(np.gradient(sharp))[None], r, 1.0)
    >>> s2 = edge_sharpness(np.abs(np.gradient(soft))[None], r, 1.0)
    >>> round(s1, 2), round(s2, 2)
    (0.25, 0.1)
    """
    g = np.asarray(slope, dtype=np.float64)
    m = ndi.binary_dilation(np.asarray(region, dtype=bool))
    if not m.any() or peak <= 0:
        return 0.0
    return float(np.percentile(g[m], 90)) / float(peak)


def printed_marks(
    kept: list[Candidate],
    *,
    min_count: int = 4,
    size_tolerance: float = 0.1,
    colour_tolerance: float = 0.05,
    min_solidity: float = 0.95,
    reach: float = 8.0,
) -> set[int]:
    """Indices of ``kept`` that are printed marks: the squares of a scale card, a ruler's ticks.

    Marks printed on a card are identical copies set in rows; no two animals of a sample are. A
    group is made of candidates that are convex (solidity at least ``min_solidity``), of the same
    box size and body area (within ``size_tolerance``) and colour (within ``colour_tolerance``),
    each within ``reach`` box sizes of another member; it is printed when it has at least
    ``min_count`` members lying in one row (their centres at most one box size from a common
    line; a chequered card's two rows of squares count as one).

    Examples
    --------
    >>> square = Candidate((100, 100, 26, 26), (100, 100, 26, 26), 590.0, 1.0, 0.98, 5.0, 0.8, False,
    ...                    colour=(0.33, 0.32, 0.36))
    >>> card = [dataclasses.replace(square, box=(100 + 42 * k, 100 + 20 * (k % 2), 26, 26)) for k in range(5)]
    >>> sorted(printed_marks(card))
    [0, 1, 2, 3, 4]
    >>> beetles = [dataclasses.replace(c, body_area=590.0 * (1 + 0.3 * k)) for k, c in enumerate(card)]
    >>> printed_marks(beetles)  # sizes differ: animals
    set()
    >>> scattered = [dataclasses.replace(c, box=(100 + 42 * k, 100 + 60 * k * k, 26, 26))
    ...              for k, c in enumerate(card)]
    >>> printed_marks(scattered)  # not in a row
    set()
    """
    n = len(kept)
    if n < min_count:
        return set()
    box = np.array([c.box for c in kept], dtype=np.float64).reshape(n, 4)
    size = np.maximum(box[:, 2], box[:, 3])
    centre = box[:, :2] + box[:, 2:] / 2.0
    area = np.array([c.body_area for c in kept], dtype=np.float64)
    solid = [i for i, c in enumerate(kept) if c.solidity >= min_solidity]
    groups: dict[tuple[int, int], list[int]] = {}
    # marks of one card share one ink: colours of different lengths are never alike
    for length in {len(kept[i].colour) for i in solid}:
        idx = np.array([i for i in solid if len(kept[i].colour) == length], dtype=np.intp)
        colour = np.array([kept[i].colour for i in idx], dtype=np.float64).reshape(idx.size, length)
        b, a, c, z = box[idx, 2:], area[idx], centre[idx], size[idx]
        # alike[i, j], with i's box, area and size as the reference
        alike = (
            np.all(np.abs(b[:, None, :] - b[None, :, :]) <= size_tolerance * b[:, None, :], axis=-1)
            & (np.abs(a[:, None] - a[None, :]) <= size_tolerance * a[:, None])
            & (np.linalg.norm(colour[:, None, :] - colour[None, :, :], axis=-1) <= colour_tolerance)
            & (np.hypot(*(c[:, None, :] - c[None, :, :]).transpose(2, 0, 1)) <= reach * z[:, None])
        )
        _, group = connected_components(csr_matrix(np.triu(alike, k=1)), directed=False)
        for g, i in zip(group.tolist(), idx.tolist(), strict=True):
            groups.setdefault((length, g), []).append(i)
    marks: set[int] = set()
    for members in groups.values():
        if len(members) < min_count:
            continue
        pts = centre[members]
        d = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(d, full_matrices=False)
        across = np.abs(d @ vt[1])
        if float(across.max()) <= float(np.median(size[members])):
            marks.update(members)
    return marks


def touching_regions(regions: np.ndarray) -> set[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of labels of ``regions`` (0: none) whose pixels touch
    (8-connected): parts of one blob of foreground that the body finder cut apart.

    Examples
    --------
    >>> r = np.array([[1, 1, 0, 3], [0, 2, 0, 3], [0, 0, 0, 0]])
    >>> sorted(touching_regions(r))
    [(1, 2)]
    """
    lab = np.asarray(regions)
    if lab.ndim != 2:
        raise ValueError(f"regions must be 2-D; given shape {lab.shape}")
    pairs: set[tuple[int, int]] = set()
    padded = np.pad(lab, 1)
    h, w = lab.shape
    centre = padded[1 : h + 1, 1 : w + 1]
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        other = padded[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]
        differ = (centre > 0) & (other > 0) & (centre != other)
        if differ.any():
            a, b = centre[differ], other[differ]
            for u, v in set(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist(), strict=True)):
                pairs.add((int(u), int(v)))
    return pairs


def join_faint_parts(
    kept: list[Candidate], touching: set[tuple[int, int]], *, faint_ratio: float = 0.6
) -> list[Candidate]:
    """A translucent part touching a body is part of that animal: a wing (a membrane, far fainter
    than the sclerotised body it grows from) that the body finder cut off at its narrow base.

    A candidate whose region touches another's (``touching``: pairs of :attr:`Candidate.number`)
    and whose peak strength is at most ``faint_ratio`` of that one's joins it: it is dropped and
    the stronger one's box grows to cover it. Strongest first, so a wing joins the body, not the
    other wing. Separate animals touching each other are kept apart when their contrasts are alike
    (any two sclerotised bodies); candidates that do not touch are never joined.

    Examples
    --------
    >>> body = Candidate((10, 10, 20, 10), (10, 10, 20, 10), 200.0, 2.0, 0.9, 5.0, 0.9, False,
    ...                  peak=0.6, number=1)
    >>> wing = dataclasses.replace(body, box=(25, 0, 30, 25), peak=0.3, number=2)
    >>> [c.box for c in join_faint_parts([body, wing], {(1, 2)})]
    [(10, 0, 45, 25)]
    >>> len(join_faint_parts([body, wing], set()))  # not touching
    2
    >>> len(join_faint_parts([body, wing], {(1, 2)}, faint_ratio=0.4))  # not faint enough
    2
    """
    if not 0.0 <= faint_ratio < 1.0:
        raise ValueError(f"faint_ratio must be in [0, 1); given {faint_ratio}")
    neighbours: dict[int, set[int]] = {}
    for a, b in touching:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    out: list[Candidate] = []
    host_of: dict[int, int] = {}  # candidate number -> index in out of the animal it joined
    for c in sorted(kept, key=lambda c: -c.peak):
        hosts = [
            host_of[n]
            for n in neighbours.get(c.number, ())
            if n in host_of and c.peak <= faint_ratio * out[host_of[n]].peak and not c.distinct
        ]
        if not hosts:
            host_of[c.number] = len(out)
            out.append(c)
            continue
        k = min(hosts)  # the strongest
        o = out[k]
        x0, y0 = min(o.box[0], c.box[0]), min(o.box[1], c.box[1])
        x1 = max(o.box[0] + o.box[2], c.box[0] + c.box[2])
        y1 = max(o.box[1] + o.box[3], c.box[1] + c.box[3])
        out[k] = dataclasses.replace(o, box=(x0, y0, x1 - x0, y1 - y0))
        host_of[c.number] = k
    return out


def _low_percentile_noise(strength: np.ndarray, mask: np.ndarray) -> float:
    """A noise level of a non-negative strength map: its 10th percentile inside ``mask`` over
    0.46 (the 10th percentile of the magnitude of 2-D Gaussian noise, a Rayleigh variable, is
    0.46 sigma); a tenth of the pixels being paper is enough."""
    values = strength[mask]
    if values.size == 0:
        return 0.0
    return float(np.percentile(values[:: max(1, values.size // 250_000)], 10)) / 0.46


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
