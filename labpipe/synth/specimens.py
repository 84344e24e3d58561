"""Specimen and debris sprites for synthetic plates: procedural beetles, real cut-outs, debris.

A *sprite* is a small RGBA image with a soft shadow, built deterministically from a :class:`Recipe`
(kind, seed, size, angle). The plate layout builds each sprite once to learn its exact mask; the
renderer builds it again when it paints the tiles the sprite covers, and gets the same pixels, so
ground-truth boxes equal the painted masks exactly.

Real cut-outs come from photographs of pinned beetles (``../shared/data/carabidae-crops``): the
beetle is the large dark object near the centre; the label, the pin head (a beige disc) and the
pin are not part of it. :func:`extract_cutout` segments it with brightness/saturation thresholds
relative to the photo's border, a morphological opening that keeps the body, and the dark
appendages connected to it; a pin head lying on the body is painted over with the surrounding
beetle colour, and the pin shaft leading to a pin head beside the body is cut off. Other animals
photographed on a plain background (springtails on a dark dish, insects in a well) are cut out by
:func:`labpipe.synth.cutouts.extract_plain_cutout`; :func:`load_cutout` picks the extractor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage as ndi

__all__ = [
    "ALPHA_MASK_LEVEL",
    "CUTOUT_SUFFIXES",
    "EXTRACTORS",
    "Cutout",
    "Extractor",
    "Recipe",
    "Sprite",
    "build_sprite",
    "extract_cutout",
    "list_cutout_files",
    "load_cutout",
]

ALPHA_MASK_LEVEL = 128
"""A sprite pixel belongs to the object's mask where its 8-bit alpha is >= 128 (alpha >= 0.5)."""

CUTOUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""File suffixes looked at in a cut-out folder."""

_LIGHT = np.array([-0.6, -0.8])
"""Direction towards the light in image coordinates (x right, y down): from the top left."""

SpriteKind = Literal["procedural", "real", "debris"]
Extractor = Literal["pinned", "plain", "well"]
"""How a photograph is cut out: :func:`extract_cutout` (a pinned beetle on a light background),
:func:`labpipe.synth.cutouts.extract_plain_cutout` on the crop's border (one animal on a plain
background of either polarity), or the same on the central disc of a well photographed from above."""

EXTRACTORS: tuple[str, ...] = ("pinned", "plain", "well")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a sprite's pixels.

    Attributes
    ----------
    kind:
        ``"procedural"`` (a drawn beetle), ``"real"`` (a cut-out from ``cutout``) or ``"debris"``.
    seed:
        Seeds the sprite's own random choices (body shape, colours, leg posture, debris shape).
    length_px:
        Body length in pixels (head to elytra tip, appendages excluded) for specimens; the largest
        extent for debris.
    angle:
        Rotation in radians; 0 points the head up (towards -y), positive turns clockwise.
    cutout:
        The photograph a ``"real"`` sprite is cut from.
    compact:
        Procedural beetles only: legs and antennae drawn in close to the body (as in most
        specimens preserved in ethanol); used to fit specimens into a crowded dish.
    extractor:
        ``"real"`` sprites only: how ``cutout`` is cut out (``"pinned"``, ``"plain"`` or
        ``"well"``; see :data:`Extractor`). Plain and well cut-outs (animals in ethanol, lying on
        the dish bottom) cast a fainter, tighter shadow than pinned beetles.
    pale:
        Debris only: a pale particle or fibre (dust and lint on a dark dish) instead of a dark one.
    """

    kind: SpriteKind
    seed: int
    length_px: float
    angle: float
    cutout: Path | None = None
    compact: bool = False
    extractor: Extractor = "pinned"
    pale: bool = False


@dataclass(frozen=True, eq=False)
class Sprite:
    """A rendered object in its own frame; the plate places the frame's top-left corner.

    Attributes
    ----------
    alpha:
        ``(h, w)`` uint8 coverage. The object's mask is ``alpha >= ALPHA_MASK_LEVEL``.
    body:
        ``(h, w)`` bool: the body without legs and antennae (used to make touching pairs touch).
    center:
        ``(x, y)`` of the body centre in the frame.
    rgb:
        ``(h, w, 3)`` uint8 colour (not premultiplied); None for a mask-only build.
    shadow:
        ``(h, w)`` uint8 shadow opacity (the paper is darkened by ``shadow / 255``); None for a
        mask-only build.
    """

    alpha: np.ndarray
    body: np.ndarray
    center: tuple[float, float]
    rgb: np.ndarray | None = None
    shadow: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray:
        """The object's mask, ``alpha >= 0.5``."""
        return self.alpha >= ALPHA_MASK_LEVEL

    @property
    def nbytes(self) -> int:
        """Memory held by the sprite's arrays."""
        arrays = (self.alpha, self.body, self.rgb, self.shadow)
        return sum(a.nbytes for a in arrays if a is not None)


def build_sprite(recipe: Recipe, *, full: bool = True) -> Sprite:
    """Render a sprite from its recipe; ``full=False`` skips colour and shadow (same mask and frame).

    The result depends on the recipe only, so two builds give identical arrays.
    """
    if recipe.length_px <= 0:
        raise ValueError(f"length_px must be positive, got {recipe.length_px}")
    if recipe.kind == "procedural":
        return _procedural_beetle(recipe, full)
    if recipe.kind == "real":
        if recipe.cutout is None:
            raise ValueError("a 'real' recipe needs a cutout path")
        cutout = load_cutout(recipe.cutout, recipe.extractor)
        if cutout is None:
            raise ValueError(
                f"{recipe.cutout}: no usable specimen could be cut out of this image "
                f"(extractor {recipe.extractor!r})"
            )
        return _cutout_sprite(cutout, recipe, full)
    if recipe.kind == "debris":
        return _debris(recipe, full)
    raise ValueError(f"unknown sprite kind {recipe.kind!r}")


# --------------------------------------------------------------------------------------------
# shared helpers


def _shadow_params(length_px: float, debris: bool, faint: bool = False) -> tuple[float, float, float, int]:
    """Shadow offset length, blur sigma, opacity, and the frame padding they need.

    ``faint``: an animal in ethanol lying on the dish bottom (a springtail), not a pinned beetle
    standing on its legs above the paper: the liquid and the diffuse light leave a shadow about a
    third as dark, half as far from the body and less blurred.

    >>> _shadow_params(100.0, debris=False)[2:], _shadow_params(100.0, debris=False, faint=True)[2:]
    ((0.42, 13), (0.15, 10))
    """
    if debris:
        offset, sigma, opacity = 0.6 + 0.03 * length_px, 0.8, 0.25
    elif faint:
        offset, sigma, opacity = 0.5 + 0.009 * length_px, 0.8 + 0.008 * length_px, 0.15
    else:
        offset, sigma, opacity = 1.0 + 0.018 * length_px, 1.0 + 0.014 * length_px, 0.42
    pad = math.ceil(offset + 3.0 * sigma) + 3
    return offset, sigma, opacity, pad


def _make_shadow(alpha: np.ndarray, offset: float, sigma: float, opacity: float) -> np.ndarray:
    """A soft shadow cast away from the light: the blurred mask shifted by ``offset`` pixels."""
    dx, dy = (-_LIGHT * offset).round().astype(int)
    img = Image.fromarray(alpha, "L").filter(ImageFilter.GaussianBlur(sigma))
    blurred = np.asarray(img, dtype=np.float32)
    shifted = np.zeros_like(blurred)
    h, w = blurred.shape
    shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = blurred[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return np.round(shifted * opacity).astype(np.uint8)


def _to_u8(values: np.ndarray) -> np.ndarray:
    out = np.rint(values)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


class _Canvas:
    """Supersampled drawing layers in a sprite frame, with geometry given in body coordinates.

    Body coordinates: ``u`` along the body towards the head, ``v`` to the body's right, in pixels,
    origin at the body centre. ``angle`` 0 points ``u`` up the image. Shapes are collected first;
    :meth:`render` then sizes the frame to hold them all (plus ``pad``) and draws them.
    """

    def __init__(self, angle: float, pad: int, supersample: int) -> None:
        self.fwd = np.array([math.sin(angle), -math.cos(angle)])
        self.right = np.array([math.cos(angle), math.sin(angle)])
        self.pad = pad
        self.ss = supersample
        self.ops: list[tuple[str, str, np.ndarray, list[float]]] = []
        self.cx = self.cy = 0.0
        self.w = self.h = 0

    def _xy(self, uv: np.ndarray) -> np.ndarray:
        uv = np.asarray(uv, dtype=float).reshape(-1, 2)
        return uv[:, :1] * self.fwd + uv[:, 1:] * self.right

    def polygon(self, layer: str, uv: np.ndarray) -> None:
        self.ops.append(("polygon", layer, self._xy(uv), []))

    def limb(self, layer: str, uv: np.ndarray, widths: list[float]) -> None:
        """A jointed limb: one thick segment per pair of points, round joints."""
        self.ops.append(("limb", layer, self._xy(uv), list(widths)))

    def render(self, groups: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        """Coverage (0..255, uint8) in the frame of each group of layers, drawn together."""
        lo = np.full(2, np.inf)
        hi = np.full(2, -np.inf)
        for _, _, xy, widths in self.ops:
            grow = max(widths) / 2.0 + 1.0 if widths else 1.0
            lo = np.minimum(lo, xy.min(axis=0) - grow)
            hi = np.maximum(hi, xy.max(axis=0) + grow)
        x0, y0 = math.floor(lo[0]) - self.pad, math.floor(lo[1]) - self.pad
        self.w = math.ceil(hi[0]) + self.pad - x0
        self.h = math.ceil(hi[1]) + self.pad - y0
        self.cx, self.cy = float(-x0), float(-y0)
        ss = self.ss
        out: dict[str, np.ndarray] = {}
        for name, members in groups.items():  # one big image at a time
            img = Image.new("L", (self.w * ss, self.h * ss), 0)
            draw = ImageDraw.Draw(img)
            for kind, layer, xy, widths in self.ops:
                if layer not in members:
                    continue
                pts = (xy + np.array([self.cx, self.cy])) * ss
                if kind == "polygon":
                    draw.polygon([tuple(p) for p in pts], fill=255)
                    continue
                for i, width in enumerate(widths):
                    w = max(1.0, width * ss)
                    (ax, ay), (bx, by) = pts[i], pts[i + 1]
                    draw.line([(ax, ay), (bx, by)], fill=255, width=max(1, round(w)))
                    r = w / 2.0
                    if r >= 1.0:
                        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=255)
                        if i == 0:
                            draw.ellipse([ax - r, ay - r, ax + r, ay + r], fill=255)
            if ss > 1:
                img = img.reduce(ss)
            out[name] = np.asarray(img, dtype=np.uint8)
            del draw, img
        return out

    def body_coords(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``u`` and ``v`` of the centres of frame pixels ``(ys, xs)``."""
        x = xs.astype(np.float32) + np.float32(0.5 - self.cx)
        y = ys.astype(np.float32) + np.float32(0.5 - self.cy)
        u = x * np.float32(self.fwd[0]) + y * np.float32(self.fwd[1])
        v = x * np.float32(self.right[0]) + y * np.float32(self.right[1])
        return u, v


def _superellipse(u0: float, a: float, b: float, n: float, taper: float, m: int = 96) -> np.ndarray:
    """Outline (in body coordinates) of a superellipse centred on the axis at ``u0``.

    ``a`` is the half-length along the body, ``b`` the half-width, ``n`` the exponent (2 is an
    ellipse, larger is boxier), ``taper`` widens the front (positive) or the back (negative).
    """
    t = np.linspace(0.0, 2.0 * np.pi, m, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    uu = np.sign(c) * np.abs(c) ** (2.0 / n)
    vv = np.sign(s) * np.abs(s) ** (2.0 / n)
    width = b * (1.0 + taper * uu)
    return np.stack([u0 + a * uu, width * vv], axis=1)


def _crop_frame(alpha: np.ndarray, pad: int) -> tuple[slice, slice, tuple[int, int]]:
    """The slice of the frame around ``alpha > 0`` plus ``pad``: sprites are stored cropped."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return slice(0, 1), slice(0, 1), (0, 0)
    h, w = alpha.shape
    y0, y1 = max(0, int(rows[0]) - pad), min(h, int(rows[-1]) + 1 + pad)
    x0, x1 = max(0, int(cols[0]) - pad), min(w, int(cols[-1]) + 1 + pad)
    return slice(y0, y1), slice(x0, x1), (x0, y0)


# --------------------------------------------------------------------------------------------
# procedural beetles

_BODY_COLOURS = np.array(
    [
        (22, 20, 19),  # black
        (30, 25, 22),  # black-brown
        (48, 32, 22),  # dark brown
        (72, 44, 26),  # brown
        (84, 42, 24),  # reddish brown
        (100, 52, 30),  # chestnut
        (24, 34, 30),  # dark metallic green
        (28, 28, 40),  # dark metallic blue
    ],
    dtype=np.float32,
)
_BODY_COLOUR_P = np.array([0.22, 0.18, 0.17, 0.12, 0.11, 0.08, 0.06, 0.06])


@dataclass(frozen=True)
class _Morph:
    """Proportions of one procedural beetle, as fractions of its body length."""

    kind: str
    width: float  # body width / length
    elytra: float  # elytra length
    pronotum: float
    head: float
    abdomen: float  # exposed abdomen (rove beetles)
    snout: float  # rostrum (weevils)
    pron_width: float  # pronotum width / body width
    head_width: float  # head width / pronotum width
    elytra_n: float
    pron_n: float
    leg: float  # total leg length
    antenna: float
    spread: float  # 0 folded legs .. 1 spread legs


def _random_morph(rng: np.random.Generator) -> _Morph:
    kind = str(rng.choice(["carabid", "rove", "weevil", "round"], p=[0.5, 0.22, 0.16, 0.12]))
    spread = float(rng.beta(1.2, 2.5))  # most specimens in a sample have their legs drawn in
    u = rng.uniform
    if kind == "carabid":
        return _Morph(
            kind, u(0.32, 0.42), u(0.56, 0.62), u(0.19, 0.23), u(0.13, 0.16), 0.0, 0.0, u(0.78, 0.95),
            u(0.68, 0.82), u(2.3, 2.9), u(2.3, 3.2), u(0.38, 0.55), u(0.3, 0.55), spread,
        )  # fmt: skip
    if kind == "rove":
        return _Morph(
            kind, u(0.2, 0.27), u(0.2, 0.26), u(0.17, 0.2), u(0.14, 0.17), u(0.36, 0.44), 0.0, u(0.9, 1.02),
            u(0.82, 0.95), u(2.6, 3.4), u(2.2, 3.0), u(0.3, 0.42), u(0.25, 0.4), spread,
        )  # fmt: skip
    if kind == "weevil":
        return _Morph(
            kind, u(0.4, 0.5), u(0.57, 0.64), u(0.2, 0.24), u(0.08, 0.1), 0.0, u(0.1, 0.18), u(0.72, 0.85),
            u(0.55, 0.7), u(2.0, 2.3), u(2.0, 2.4), u(0.35, 0.48), u(0.25, 0.35), spread * 0.6,
        )  # fmt: skip
    return _Morph(
        kind, u(0.6, 0.75), u(0.64, 0.7), u(0.18, 0.22), u(0.1, 0.13), 0.0, 0.0, u(0.75, 0.9),
        u(0.55, 0.7), u(2.0, 2.2), u(2.0, 2.4), u(0.25, 0.35), u(0.2, 0.3), spread * 0.4,
    )  # fmt: skip


def _procedural_beetle(recipe: Recipe, full: bool) -> Sprite:
    rng = np.random.default_rng(recipe.seed)
    mo = _random_morph(rng)
    if recipe.compact:
        mo = dataclasses.replace(mo, spread=0.0, leg=mo.leg * 0.75, antenna=mo.antenna * 0.6)
    L = float(recipe.length_px)
    W = mo.width * L
    # stations along the body (u grows towards the head), tail at -L/2
    tail = -L / 2.0
    abd_a = mo.abdomen * L / 2.0
    ely_a = mo.elytra * L / 2.0
    u_ely = tail + 2 * abd_a + ely_a - (0.03 * L if mo.abdomen else 0.0)
    pr_a = mo.pronotum * L / 2.0
    waist = (0.035 if mo.kind == "carabid" else 0.0) * L
    u_pr = u_ely + ely_a + pr_a + waist - 0.02 * L
    hd_a = mo.head * L / 2.0
    u_hd = u_pr + pr_a + hd_a - 0.03 * L
    pr_b = mo.pron_width * W / 2.0
    hd_b = mo.head_width * pr_b
    front = u_hd + hd_a + mo.snout * L

    # appendages: legs (3 pairs) and antennae, in body coordinates
    limbs: list[tuple[np.ndarray, list[float]]] = []
    leg_w = max(0.7, 0.026 * L * (1.2 if mo.kind == "round" else 1.0))
    attach = [
        (u_pr - 0.3 * pr_a, 0.6 * pr_b),
        (u_ely + 0.75 * ely_a, 0.5 * W / 2),
        (u_ely + 0.45 * ely_a, 0.55 * W / 2),
    ]
    # base directions (degrees from the forward axis, towards the side), folded and spread
    folded = (
        [(70.0, 150.0, 165.0), (115.0, 168.0, 175.0), (150.0, 175.0, 179.0)]  # tucked along the body
        if recipe.compact
        else [(30.0, 15.0, 5.0), (105.0, 160.0, 170.0), (150.0, 172.0, 178.0)]
    )
    spread = [(60.0, 30.0, 20.0), (90.0, 125.0, 140.0), (120.0, 150.0, 165.0)]
    for side in (-1.0, 1.0):
        for k, (ua, va) in enumerate(attach):
            lengths = np.array([0.36, 0.36, 0.28]) * mo.leg * L * rng.uniform(0.9, 1.1)
            lengths[0] += 0.45 * W / 2  # the femur starts under the body
            if k == 2:
                lengths *= 1.15
            pts = [np.array([ua, side * va])]
            for j in range(3):
                jitter = rng.normal(0, 4 if recipe.compact else 9)
                a = (1 - mo.spread) * folded[k][j] + mo.spread * spread[k][j] + jitter
                rad = math.radians(a)
                step = lengths[j] * np.array([math.cos(rad), side * math.sin(rad)])
                pts.append(pts[-1] + step)
            limbs.append((np.array(pts), [leg_w * 1.3, leg_w * 0.9, leg_w * 0.6]))
    ant_w = max(0.6, 0.013 * L)
    n_seg = 6
    for side in (-1.0, 1.0):
        base = np.array([front - (mo.snout * L * 0.5 if mo.snout else 0.15 * hd_a), side * 0.55 * hd_b])
        ang = math.radians(rng.uniform(95, 130) if recipe.compact else rng.uniform(15, 40))
        bend = math.radians(rng.uniform(-6, 12))
        seg = mo.antenna * L / n_seg
        pts = [base]
        for j in range(n_seg):
            if mo.kind == "weevil" and j == 2:
                ang += math.radians(60)  # elbowed antenna
            pts.append(pts[-1] + seg * np.array([math.cos(ang), side * math.sin(ang)]))
            ang += bend + rng.normal(0, 0.05)
        widths = list(np.linspace(ant_w * 1.1, ant_w * (1.3 if mo.kind == "weevil" else 0.8), n_seg))
        limbs.append((np.array(pts), widths))

    offset, sigma, opacity, pad = _shadow_params(L, debris=False)
    cv = _Canvas(recipe.angle, pad, 3 if L < 150 else 2)

    for pts, widths in limbs:
        cv.limb("legs", pts, widths)
    if mo.abdomen:
        n_tergites = 5
        for j in range(n_tergites):
            t0 = tail + 2 * abd_a * j / n_tergites
            t1 = tail + 2 * abd_a * (j + 1) / n_tergites + 0.004 * L
            w0 = W / 2 * (0.55 + 0.45 * j / n_tergites) * 0.92
            w1 = W / 2 * (0.55 + 0.45 * (j + 1) / n_tergites) * 0.95
            cv.polygon("abdomen", np.array([(t0, -w0), (t1, -w1), (t1, w1), (t0, w0)]))
    cv.polygon("elytra", _superellipse(u_ely, ely_a, W / 2, mo.elytra_n, 0.12))
    taper = -0.12 if mo.kind == "carabid" else 0.05
    cv.polygon("pronotum", _superellipse(u_pr, pr_a, pr_b, mo.pron_n, taper))
    # the waist (mesothorax) and the neck join the parts: no paper shows between them
    neck = 0.45 * pr_b
    joints = [(u_ely + 0.8 * ely_a, u_pr, neck), (u_pr + 0.5 * pr_a, u_hd, 0.7 * hd_b)]
    for ua, ub, half_w in joints:  # drawn beneath the body parts: only the waist shows
        cv.polygon("abdomen", np.array([(ua, -half_w), (ub, -half_w), (ub, half_w), (ua, half_w)]))
    cv.polygon("head", _superellipse(u_hd, hd_a, hd_b, 2.2, 0.0))
    if mo.snout:
        cv.polygon(
            "head", _superellipse(u_hd + hd_a + mo.snout * L / 2, mo.snout * L / 2, 0.45 * hd_b, 2.4, 0.0)
        )
    else:
        for side in (-1.0, 1.0):  # mandibles
            m = np.array(
                [(0, 0.45 * hd_b), (0.3 * hd_a, 0.4 * hd_b), (0.45 * hd_a, 0.1 * hd_b), (0.1, 0.15 * hd_b)]
            )
            m[:, 1] *= side
            m[:, 0] += u_hd + 0.8 * hd_a
            cv.polygon("head", m)

    layer_names = ["legs", "abdomen", "elytra", "pronotum", "head"]
    groups = {"alpha": tuple(layer_names), "body": tuple(layer_names[1:])}
    if full:
        groups |= {name: (name,) for name in layer_names}
    drawn = cv.render(groups)
    alpha_u8 = drawn.pop("alpha")
    body = drawn.pop("body") >= 128
    sl_y, sl_x, (fx, fy) = _crop_frame(alpha_u8, pad)
    center = (cv.cx - fx, cv.cy - fy)
    body = body[sl_y, sl_x]
    alpha_u8 = alpha_u8[sl_y, sl_x]
    if not full:
        return Sprite(alpha=alpha_u8.copy(), body=body.copy(), center=center)

    # colours, computed only where something was drawn, a band of rows at a time: each layer
    # with its own shading, composited over the layers beneath it
    cov = {name: c[sl_y, sl_x] for name, c in drawn.items()}
    alpha = alpha_u8
    light_uv = np.array([_LIGHT @ cv.fwd, _LIGHT @ cv.right])
    base = _BODY_COLOURS[rng.choice(len(_BODY_COLOURS), p=_BODY_COLOUR_P)] * np.float32(
        rng.uniform(0.85, 1.08)
    )
    fore = base if rng.random() < 0.8 else _BODY_COLOURS[int(rng.integers(3, 6))]
    legcol = base * np.float32(1.25) + np.array([18, 6, 0], np.float32) if rng.random() < 0.6 else base * 1.05
    gloss = float(rng.uniform(0.35, 1.0))
    half = W / 4.0
    spacing = half / 4.5

    def dome(
        u: np.ndarray, v: np.ndarray, uc: float, a: float, b: float, vc: float | np.ndarray = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        du = (u - uc) / a
        dv = (v - vc) / b
        r2 = np.clip(du * du + dv * dv, 0.0, 1.0)
        shade = 0.62 + 0.5 * np.sqrt(1.0 - r2)
        hu, hv = uc + 0.45 * a * light_uv[0], vc + 0.45 * b * light_uv[1]
        spot = np.exp(-(((u - hu) / (0.3 * a)) ** 2) - ((v - hv) / (0.3 * b)) ** 2)
        return shade, spot

    def colour(name: str, u: np.ndarray, v: np.ndarray, noise: np.ndarray) -> np.ndarray:
        if name == "legs":
            return legcol[None, :] * (0.9 + 2.0 * noise)[:, None]
        if name == "elytra":
            shade, spot = dome(u, v, u_ely, ely_a, half, np.where(v >= 0, half, -half))
            lum = shade * (1.0 - 0.55 * np.exp(-((v / max(0.8, 0.006 * L)) ** 2)))  # suture
            if spacing >= 3.0:  # striae
                lum *= 1.0 - 0.12 * np.clip(np.cos(2 * np.pi * v / spacing), 0, 1) ** 4
            return base[None, :] * (lum * (1 + noise))[:, None] + (110.0 * gloss * spot)[:, None]
        if name == "abdomen":
            if not mo.abdomen:  # only the waist and neck show
                return np.broadcast_to(fore * np.float32(0.8), (u.size, 3))
            shade, spot = dome(u, v, tail + abd_a, abd_a * 1.2, W / 2.5)
            rings = 1.0 - 0.25 * np.clip(np.cos(2 * np.pi * (u - tail) / (2 * abd_a / 5)), 0, 1) ** 8
            return base[None, :] * (shade * rings * (1 + noise))[:, None] + (60.0 * gloss * spot)[:, None]
        if name == "pronotum":
            shade, spot = dome(u, v, u_pr, pr_a, pr_b)
            midline = 1.0 - 0.25 * np.exp(-((v / max(0.8, 0.004 * L)) ** 2))
            return fore[None, :] * (shade * midline * (1 + noise))[:, None] + (120.0 * gloss * spot)[:, None]
        shade, spot = dome(u, v, u_hd, hd_a, hd_b)
        eyes = np.zeros_like(u)
        for side in (-1.0, 1.0):
            eyes += np.exp(
                -(((u - (u_hd + 0.2 * hd_a)) / (0.3 * hd_a)) ** 2)
                - ((v - side * 0.85 * hd_b) / (0.25 * hd_b)) ** 2
            )
        lum = shade * (1 - 0.5 * np.clip(eyes, 0, 1)) * (1 + noise)
        return fore[None, :] * lum[:, None] + (90.0 * gloss * spot + 60.0 * gloss * eyes**4)[:, None]

    rgb = np.zeros((*alpha.shape, 3), np.uint8)
    band = 192
    for r0 in range(0, alpha.shape[0], band):
        ys, xs = np.nonzero(alpha[r0 : r0 + band])
        if ys.size == 0:
            continue
        u_all, v_all = cv.body_coords(ys + (r0 + sl_y.start), xs + sl_x.start)
        noise_all = rng.normal(0.0, 0.035, size=ys.size).astype(np.float32)
        acc = np.zeros((ys.size, 3), np.float32)
        acc_a = np.zeros(ys.size, np.float32)
        for name in layer_names:
            if name not in cov:
                continue
            c_all = cov[name][r0 : r0 + band][ys, xs].astype(np.float32) * np.float32(1 / 255)
            sel = np.nonzero(c_all > 0)[0]
            if sel.size == 0:
                continue
            col = colour(name, u_all[sel], v_all[sel], noise_all[sel])
            c = c_all[sel]
            acc[sel] = acc[sel] * (1.0 - c)[:, None] + col.astype(np.float32) * c[:, None]
            acc_a[sel] = acc_a[sel] * (1.0 - c) + c
        rgb[ys + r0, xs] = _to_u8(acc / np.maximum(acc_a, np.float32(1e-6))[:, None])
    return Sprite(
        alpha=alpha_u8,
        body=body,
        center=center,
        rgb=rgb,
        shadow=_make_shadow(alpha_u8, offset, sigma, opacity),
    )


# --------------------------------------------------------------------------------------------
# debris


_DARK_FIBRES = [(70, 70, 75), (50, 45, 40), (40, 55, 110), (120, 40, 40), (150, 150, 150)]
_DARK_PARTICLES = [(35, 28, 22), (60, 45, 30), (90, 70, 50), (50, 50, 50), (110, 85, 60)]
_PALE_FIBRES = [(205, 205, 200), (175, 170, 160), (150, 165, 200), (200, 150, 150), (225, 225, 220)]
_PALE_PARTICLES = [(200, 195, 185), (170, 160, 140), (215, 210, 200), (150, 150, 150), (185, 170, 145)]


def _debris(recipe: Recipe, full: bool) -> Sprite:
    """A small particle (crumb, grain, fragment) or a short fibre, at most ``length_px`` across."""
    rng = np.random.default_rng(recipe.seed)
    size = float(recipe.length_px)
    fibre = rng.random() < 0.4
    offset, sigma, opacity, pad = _shadow_params(size, debris=True)
    cv = _Canvas(recipe.angle, pad, 4)
    if fibre:
        n = 8
        t = np.linspace(-0.5, 0.5, n) * size * 0.92
        curve = rng.normal(0, 0.08, n).cumsum() * size * 0.25
        curve -= np.linspace(curve[0], curve[-1], n)
        pts = np.stack([t, curve], axis=1)
        width = float(np.clip(rng.uniform(0.02, 0.06) * size, 1.0, 4.0))
        cv.limb("d", pts, [width] * (n - 1))
        palette = _PALE_FIBRES if recipe.pale else _DARK_FIBRES
        colour = np.array(palette[int(rng.integers(5))], np.float32)
    else:
        m = 24
        ang = np.linspace(0, 2 * np.pi, m, endpoint=False) + rng.uniform(0, 0.2, m)
        elong = rng.uniform(0.45, 1.0)
        raw = rng.uniform(0.4, 1.0, m)
        k = int(rng.integers(1, 4))  # smoothing: 1 jagged crumb .. 3 rounded grain
        r = np.convolve(np.r_[raw[-k:], raw, raw[:k]], np.ones(2 * k + 1) / (2 * k + 1), "valid")
        r = r / r.max() * size / 2.0 * 0.92
        pts = np.stack([r * np.cos(ang), elong * r * np.sin(ang)], axis=1)
        cv.polygon("d", pts)
        palette = _PALE_PARTICLES if recipe.pale else _DARK_PARTICLES
        colour = np.array(palette[int(rng.integers(5))], np.float32)
    alpha_u8 = cv.render({"d": ("d",)})["d"]
    sl_y, sl_x, (fx, fy) = _crop_frame(alpha_u8, pad)
    body = alpha_u8 >= ALPHA_MASK_LEVEL
    center = (cv.cx - fx, cv.cy - fy)
    if not full:
        return Sprite(alpha=alpha_u8[sl_y, sl_x], body=body[sl_y, sl_x], center=center)
    noise = rng.normal(1.0, 0.08, size=alpha_u8.shape).astype(np.float32)
    rgb = colour[None, None, :] * noise[..., None]
    alpha_u8 = alpha_u8[sl_y, sl_x]
    return Sprite(
        alpha=alpha_u8,
        body=body[sl_y, sl_x],
        center=center,
        rgb=_to_u8(rgb[sl_y, sl_x]),
        shadow=_make_shadow(alpha_u8, offset, sigma, opacity),
    )


# --------------------------------------------------------------------------------------------
# real cut-outs


@dataclass(frozen=True, eq=False)
class Cutout:
    """A specimen segmented from a photograph.

    Attributes
    ----------
    name:
        The photograph's file name.
    rgb:
        ``(h, w, 3)`` uint8 colour (a pinned beetle's pin head painted over).
    alpha:
        ``(h, w)`` uint8: the mask (``>= 128``), feathered by a fraction of a pixel.
    body:
        ``(h, w)`` bool: the body without legs and antennae.
    body_length:
        Length of the body's major axis in source pixels.
    """

    name: str
    rgb: np.ndarray
    alpha: np.ndarray
    body: np.ndarray
    body_length: float


def list_cutout_files(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted by name (the order layouts draw from)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: cut-out folder does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in CUTOUT_SUFFIXES and p.is_file())


_CUTOUT_CACHE: dict[str, Cutout | None] = {}


def load_cutout(path: Path, extractor: Extractor = "pinned") -> Cutout | None:
    """The cut-out of one photograph, or None where no clean specimen could be segmented.

    ``extractor`` picks the segmentation (see :data:`Extractor`): ``"pinned"``
    (:func:`extract_cutout`), ``"plain"`` (:func:`labpipe.synth.cutouts.extract_plain_cutout`
    with the crop's border as reference) or ``"well"`` (the same on the central disc
    :data:`labpipe.synth.cutouts.WELL_DISC` of a well photo). Cached per process (keyed by
    extractor, path, size and modification time).
    """
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
    path = Path(path)
    st = path.stat()
    key = f"{extractor}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key not in _CUTOUT_CACHE:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
        if extractor == "pinned":
            _CUTOUT_CACHE[key] = extract_cutout(rgb, name=path.name)
        else:
            from labpipe.synth.cutouts import WELL_DISC, extract_plain_cutout  # imports this module

            disc = WELL_DISC if extractor == "well" else None
            _CUTOUT_CACHE[key] = extract_plain_cutout(rgb, name=path.name, disc=disc)
    return _CUTOUT_CACHE[key]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: background not 4-connected to the image border."""
    lab, _ = ndi.label(~mask)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return mask | ~np.isin(lab, border)


def _erode(mask: np.ndarray, r: float) -> np.ndarray:
    """Binary erosion by a disc of radius ``r`` (via the distance transform: fast for large r)."""
    return ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] > r


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    """Binary dilation by a disc of radius ``r``."""
    return ndi.distance_transform_edt(~mask) <= r if mask.any() else mask.copy()


def _open(mask: np.ndarray, r: float) -> np.ndarray:
    """Binary opening by a disc of radius ``r``."""
    return _dilate(_erode(mask, r), r)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    hist = hist.astype(float)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    centers = (edges[:-1] + edges[1:]) / 2
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


def _inpaint(rgb: np.ndarray, region: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill ``region`` from the nearest ``known`` pixels, smoothed so no streaks show."""
    if not region.any():
        return rgb
    _, (iy, ix) = ndi.distance_transform_edt(~known, return_indices=True)
    radius = max(1.0, float(np.sqrt(region.sum() / np.pi)))
    sigma = radius / 3.0
    ys, xs = np.nonzero(region)
    m = math.ceil(4 * sigma) + 1
    y0, y1 = max(0, ys.min() - m), min(rgb.shape[0], ys.max() + 1 + m)
    x0, x1 = max(0, xs.min() - m), min(rgb.shape[1], xs.max() + 1 + m)
    filled = rgb[iy[y0:y1, x0:x1], ix[y0:y1, x0:x1]]
    smooth = ndi.gaussian_filter(filled, sigma=(sigma, sigma, 0))
    out = rgb.copy()
    sub = region[y0:y1, x0:x1]
    out[y0:y1, x0:x1][sub] = smooth[sub]
    return out


def extract_cutout(rgb: np.ndarray, name: str = "") -> Cutout | None:
    """Segment the beetle in a photograph of a pinned specimen; None where it is not clean.

    Parameters
    ----------
    rgb:
        ``(h, w, 3)`` image, 0..255.
    name:
        Carried into the result (the source file name).

    Returns
    -------
    Cutout or None
        None where the beetle is pale (it cannot be told from the label by brightness), too small,
        cut by the photo's edge, or the mask would hold label or pin-head pixels.

    Notes
    -----
    Foreground is dark (value below Otsu's threshold and below 0.55 of the border's brightness) or
    strongly saturated (reddish legs). The body is the largest component after an opening with a
    disc of 3 % of the photo's shorter side; the mask is the body with its holes filled plus the
    foreground components touching it. Bright holes in the body (the pin head, glare, the label
    seen through a gap between the elytra) are painted with the surrounding beetle colour. A
    roundish bright blob beside the body is a pin head: its pin (a straight dark line running
    from it towards the body) is cut off along that line.
    """
    return _extract(rgb, name)[0]


def _extract(rgb: np.ndarray, name: str) -> tuple[Cutout | None, str]:
    """:func:`extract_cutout`, with the reason a photo was refused."""
    img = np.asarray(rgb, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an (h, w, 3) image, got shape {img.shape}")
    img = img[..., :3]
    h, w = img.shape[:2]
    if min(h, w) < 40:
        return None, "photo smaller than 40 px"
    a = img / 255.0
    val = a.max(-1)
    sat = (val - a.min(-1)) / (val + 1e-6)
    border = np.concatenate([val[:6].ravel(), val[-6:].ravel(), val[:, :6].ravel(), val[:, -6:].ravel()])
    vbg = float(np.percentile(border, 60))
    thr = min(0.55 * vbg, _otsu(val))
    fg = (val < thr) | ((sat > 0.55) & (val < 0.6 * vbg))
    lab, _ = ndi.label(fg)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    fg = sizes[lab] >= max(16, h * w // 4000)

    # the core: darker than the background by a looser margin (glare on black elytra is grey),
    # opened so that legs, antennae and label text drop out; the mask: the foreground touching it
    r_open = max(2, round(0.03 * min(h, w)))
    core = _largest(_open((val < 0.7 * vbg) | fg, r_open))
    if not core.any():
        return None, "no dark object"
    lab2, _ = ndi.label(fg | core)
    keep = np.unique(lab2[core])
    mask = np.isin(lab2, keep[keep > 0])

    # the body's outline closed over glare and the pin head, never over the bright background;
    # what that adds is kept, and painted over where it is as bright as the label or beige as
    # the pin head (grey glare on black elytra stays)
    r_close = max(2, round(0.03 * min(h, w)))
    p = r_close + 1
    closed = _erode(_dilate(np.pad(core, p), r_close), r_close)[p:-p, p:-p]
    solid = _fill_holes(core | (closed & (val < 0.85 * vbg) & ((sat < 0.2) | (val < thr))))
    added = solid & ~mask
    mask |= solid
    paint = added & ((val > 0.75 * vbg) | ((sat > 0.15) & (val > 0.45)))
    body = _largest(_open(mask, r_open))

    # quality: a dominant, compact body, not cut by the photo's edge
    area = float(body.sum())
    if area < 0.12 * h * w:
        return None, f"body covers {area / (h * w):.0%} of the photo (pale or fragmented)"
    edge_px = int(body[0].sum() + body[-1].sum() + body[:, 0].sum() + body[:, -1].sum())
    if edge_px > 0.3 * math.sqrt(area):
        return None, f"body cut by the photo's edge ({edge_px} px)"
    ys, xs = np.nonzero(body)
    hull_area = _convex_area(xs, ys)
    if area < 0.75 * hull_area:
        return None, f"body solidity {area / hull_area:.2f} < 0.75 (label or background joined)"
    evals = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)))
    body_length = 4.0 * math.sqrt(max(float(evals[-1]), 1e-9))

    # holes of the mask inside the body's convex hull (glare, label seen between the elytra) are
    # filled; loops closed by a leg lie outside the hull and stay open
    from skimage.morphology import convex_hull_image

    hull = convex_hull_image(body)
    holes = _fill_holes(mask) & ~mask & hull
    mask |= holes
    paint |= holes & ((val > 0.62 * vbg) | ((sat > 0.12) & (val > 0.45)))

    # the pin head: a beige disc lying on or beside the body. Inside the hull it is painted
    # over; outside it is dropped, and so is the pin running from it towards the body
    beige = (val > 0.45) & (sat > 0.12) & (sat < 0.5) & ~fg
    blab, _ = ndi.label(beige)
    near = _dilate(mask, max(3, round(0.04 * min(h, w))))
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[0:h, 0:w]
    r_min, r_max = max(3.0, 0.025 * min(h, w)), 0.15 * min(h, w)
    sizes = np.bincount(blab.ravel())
    near_ids = np.unique(blab[near])
    for k, sl in enumerate(ndi.find_objects(blab), start=1):
        # a pin head is a disc, maybe with a bright (white) centre: at least half a disc of r_min
        if sl is None or sizes[k] < 0.5 * math.pi * r_min**2 or k not in near_ids:
            continue
        comp = _fill_holes(np.pad(blab[sl] == k, 1))
        dist = ndi.distance_transform_edt(comp)
        r_in = float(dist.max())
        if not r_min <= r_in <= r_max:
            continue
        py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
        hy, hx = py - 1 + sl[0].start, px - 1 + sl[1].start
        rr = np.hypot(yy - hy, xx - hx)
        annulus = (rr > r_in + 1.5) & (rr < 1.5 * r_in)
        if (beige & annulus).sum() > 0.4 * annulus.sum():
            continue  # not a disc: wood, a beige label
        disc = rr <= r_in + 2.5
        mask = (mask & ~disc) | (disc & hull)
        paint |= disc & hull
        dist_c = math.hypot(cx - hx, cy - hy)
        if body[hy, hx] or dist_c < 1:
            continue
        dx, dy = (cx - hx) / dist_c, (cy - hy) / dist_c
        along = (xx - hx) * dx + (yy - hy) * dy
        across = np.abs((yy - hy) * dx - (xx - hx) * dy)
        corridor = (along > 0) & (along < dist_c) & (across < max(1.5, 0.45 * r_in))
        mask &= ~(corridor & ~hull & ~disc)
    mask = _largest(mask | body)

    # label text: dark strokes near the beetle that are not part of it. Where there are many,
    # some touch a leg and cannot be told from it: such photos are refused
    roi = _body_ellipse(xs, ys, (h, w), 1.6)
    text = fg & ~_dilate(mask, 2) & roi
    if text.sum() > 0.01 * roi.sum():
        return None, f"label text covers {text.sum() / roi.sum():.1%} of the beetle's surroundings"
    mask &= _body_ellipse(xs, ys, (h, w), 2.6) | body
    mask = _largest(mask)
    if paint.any():
        paint = _dilate(paint, 2) & mask
        img = _inpaint(img, paint, known=mask & ~paint)

    out = img / 255.0
    val2 = out.max(-1)
    sat2 = (val2 - out.min(-1)) / (val2 + 1e-6)
    white = int(((val2 > 0.75) & (sat2 < 0.15) & mask).sum())
    if white > 0.02 * mask.sum():
        return None, f"{white / mask.sum():.1%} of the mask is near-white (label or pin head)"
    # keep only the beetle's box (plus a margin for the feathering): smaller to warp later
    alpha, crop = feathered_alpha(mask)
    cut = Cutout(
        name=name,
        rgb=_to_u8(img[crop]),
        alpha=_to_u8(alpha[crop] * 255.0),
        body=body[crop],
        body_length=body_length,
    )
    return cut, "ok"


def feathered_alpha(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A cut-out's alpha (``mask`` feathered by a fraction of a pixel, its outline unmoved) and
    the slices of its box plus a 3-pixel margin for the feathering."""
    h, w = mask.shape
    alpha = ndi.gaussian_filter(mask.astype(np.float32), 0.6)
    alpha[mask & (alpha < 0.5)] = 0.5  # feathering must not move the mask's outline
    alpha[~mask & (alpha >= 0.5)] = 0.499
    ys_m, xs_m = np.nonzero(alpha > 0)
    crop = (
        slice(max(0, ys_m.min() - 3), min(h, ys_m.max() + 4)),
        slice(max(0, xs_m.min() - 3), min(w, xs_m.max() + 4)),
    )
    return alpha, crop


def _body_ellipse(xs: np.ndarray, ys: np.ndarray, shape: tuple[int, int], factor: float) -> np.ndarray:
    """The ellipse with the pixels' second moments (their body outline), scaled by ``factor``."""
    cx, cy = xs.mean(), ys.mean()
    cov = np.cov(np.stack([xs, ys]).astype(float)) * 4.0 * factor**2
    inv = np.linalg.inv(cov + np.eye(2) * 1e-6)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    dx, dy = xx - cx, yy - cy
    return inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy <= 1.0


def _convex_area(xs: np.ndarray, ys: np.ndarray) -> float:
    """Area of the convex hull of a set of pixels (each pixel a unit square)."""
    from scipy.spatial import ConvexHull, QhullError

    if xs.size == 0:
        return 0.0
    order = np.lexsort((xs, ys))
    xs, ys = xs[order], ys[order]
    first = np.r_[True, ys[1:] != ys[:-1]]
    last = np.r_[ys[1:] != ys[:-1], True]
    left, right, rows = xs[first], xs[last] + 1, ys[first]
    pts = np.concatenate(
        [
            np.stack([left, rows], 1),
            np.stack([left, rows + 1], 1),
            np.stack([right, rows], 1),
            np.stack([right, rows + 1], 1),
        ]
    ).astype(float)
    try:
        return float(ConvexHull(pts).volume)
    except QhullError:  # all points on a line
        return 0.0


def _cutout_sprite(cutout: Cutout, recipe: Recipe, full: bool) -> Sprite:
    """Scale a cut-out to the recipe's body length, rotate it, give it a shadow."""
    scale = recipe.length_px / cutout.body_length
    h, w = cutout.alpha.shape
    sw, sh = max(2, round(w * scale)), max(2, round(h * scale))
    resample = Image.Resampling.LANCZOS
    faint = recipe.extractor != "pinned"
    offset, sigma, opacity, pad = _shadow_params(recipe.length_px, debris=False, faint=faint)
    c, s = math.cos(recipe.angle), math.sin(recipe.angle)
    fw = math.ceil(abs(c) * sw + abs(s) * sh) + 2 * pad + 2
    fh = math.ceil(abs(s) * sw + abs(c) * sh) + 2 * pad + 2
    ocx, ocy = fw / 2.0, fh / 2.0
    # upscaling (the usual case) is one affine warp; downscaling resizes first (antialiased)
    pre = scale < 0.8
    k = 1.0 if pre else 1.0 / scale  # input pixels per output pixel
    icx, icy = (sw / 2.0, sh / 2.0) if pre else (w / 2.0, h / 2.0)
    # output pixel (x, y) samples the input rotated back by the angle about the centres
    coeffs = (k * c, k * s, icx - k * (c * ocx + s * ocy), -k * s, k * c, icy - k * (-s * ocx + c * ocy))

    def warp(img: Image.Image, method: Image.Resampling) -> Image.Image:
        if pre:
            img = img.resize((sw, sh), resample)
        return img.transform((fw, fh), Image.Transform.AFFINE, coeffs, method)

    alpha_u8 = np.asarray(warp(Image.fromarray(cutout.alpha, "L"), Image.Resampling.BICUBIC))
    body_img = warp(Image.fromarray(cutout.body.astype(np.uint8) * 255, "L"), Image.Resampling.NEAREST)
    body = (np.asarray(body_img) >= 128) & (alpha_u8 >= ALPHA_MASK_LEVEL)
    sl_y, sl_x, (fx, fy) = _crop_frame(alpha_u8, pad)
    alpha_u8, body = alpha_u8[sl_y, sl_x], body[sl_y, sl_x]
    by, bx = np.nonzero(body)
    center = (float(bx.mean() + 0.5), float(by.mean() + 0.5)) if by.size else (ocx - fx, ocy - fy)
    if not full:
        return Sprite(alpha=alpha_u8, body=body, center=center)
    rng = np.random.default_rng(recipe.seed)
    # a pinned beetle had a little more light in the photo studio than on a plate; a plain crop
    # comes from a plate scan like the one it goes to
    lo, hi = (0.82, 1.0) if recipe.extractor == "pinned" else (0.92, 1.04)
    gain = np.float32(rng.uniform(lo, hi))
    a = cutout.alpha.astype(np.float32) * np.float32(1 / 255)
    premult = np.dstack([cutout.rgb * (a * gain)[..., None], cutout.alpha])
    rgba = warp(Image.fromarray(_to_u8(premult), "RGBa"), Image.Resampling.BICUBIC).convert("RGBA")
    rgb = np.asarray(rgba)[sl_y, sl_x, :3].copy()
    del rgba
    return Sprite(
        alpha=alpha_u8,
        body=body,
        center=center,
        rgb=rgb,
        shadow=_make_shadow(alpha_u8, offset, sigma, opacity),
    )
