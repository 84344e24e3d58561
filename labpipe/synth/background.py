"""The empty plate: dark surround, glass rim, filter paper, lighting, stitching seams, sensor noise.

The dish floor is filter paper (``"paper"``: beetle samples) or a dark grey dish bottom
(``"dark"``: springtail samples in ethanol, luminance about 0.2, with faint mottling and
scratches); everything else (rim, surround, lighting, seams, noise) is the same for both.

Every value is a function of the pixel's absolute coordinates (plus the plate's seed), computed
with elementwise operations only, so a region renders to the same numbers whichever tiles it is
cut into. Textures are precomputed once per process as periodic tables and looked up by
coordinate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import fft as sp_fft
from scipy import ndimage as ndi

__all__ = ["DishGeometry", "PlateBackground"]

_TEX = 1024  # period of the paper grain table (pixels)
_FIBRE_TEX = 1031  # period of the fibre table: coprime with _TEX
_NOISE_SHAPE = (509, 521)  # periods of the sensor-noise table (coprime, so no visible repeat)


@dataclass(frozen=True)
class DishGeometry:
    """Where the Petri dish lies on the plate, in full-resolution pixels.

    Attributes
    ----------
    cx, cy:
        Centre of the dish.
    radius:
        Outer radius of the glass rim (the edge between the dark surround and the dish).
    rim_width:
        Width of the glass wall seen from above; the filter paper ends at ``radius - rim_width``.
    """

    cx: float
    cy: float
    radius: float
    rim_width: float

    @property
    def paper_radius(self) -> float:
        """Radius of the filter paper (the inner edge of the rim)."""
        return self.radius - self.rim_width

    @classmethod
    def for_plate(cls, width: int, height: int, um_per_px: float, rng: np.random.Generator) -> DishGeometry:
        """A dish of radius 0.46 of the shorter side, centred within 1.5 % of the plate's centre."""
        short = min(width, height)
        radius = 0.46 * short
        jitter = 0.015 * short
        cx = width / 2.0 + float(rng.uniform(-jitter, jitter))
        cy = height / 2.0 + float(rng.uniform(-jitter, jitter))
        rim = float(np.clip(1000.0 / um_per_px, 0.02 * radius, 0.05 * radius))
        return cls(cx=cx, cy=cy, radius=radius, rim_width=max(rim, 4.0))


@lru_cache(maxsize=4)
def _paper_texture(seed: int, um_per_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Two periodic float32 tables of filter-paper texture, each of about unit variance.

    Grain: band-passed noise (features of 15-200 um), period ``_TEX``. Fibres: thin strokes
    (10-20 um wide, 0.2-1.5 mm long) wrapped around the edges, period ``_FIBRE_TEX`` (coprime
    with ``_TEX``, so their sum repeats only every ``_TEX * _FIBRE_TEX`` pixels).
    """
    rng = np.random.default_rng([seed, 7177])
    n = _TEX
    white = rng.standard_normal((n, n), dtype=np.float32)
    fy = np.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    lo = min(0.45, um_per_px / 200.0)  # cycles/pixel of a 200 um feature
    hi = min(0.5, um_per_px / 15.0)
    band = np.exp(-((f / hi) ** 2)) * (1.0 - np.exp(-((f / lo) ** 2)))
    spectrum = sp_fft.rfft2(white)
    spectrum *= band
    grain = sp_fft.irfft2(spectrum, s=(n, n)).astype(np.float32)
    del spectrum, white
    grain /= grain.std() + 1e-12

    m = _FIBRE_TEX
    img = Image.new("F", (m, m), 0.0)
    draw = ImageDraw.Draw(img)
    n_fibres = int(np.clip(m * m * 25.0 / (1500.0 / um_per_px) ** 2, 100, 3000))
    for _ in range(n_fibres):
        length = rng.uniform(200.0, 1500.0) / um_per_px
        width = max(1, round(rng.uniform(10.0, 20.0) / um_per_px))
        x, y = rng.uniform(0, m, 2)
        ang = rng.uniform(0, 2 * math.pi)
        curl = rng.normal(0, 0.4)
        tone = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0))
        pts = []
        for t in np.linspace(0.0, 1.0, 6):
            a = ang + curl * t
            pts.append((x + math.cos(a) * length * t, y + math.sin(a) * length * t))
        for ox in (-m, 0, m):
            for oy in (-m, 0, m):
                xs = [px + ox for px, _ in pts]
                ys = [py + oy for _, py in pts]
                if max(xs) < -width or min(xs) > m + width or max(ys) < -width or min(ys) > m + width:
                    continue
                draw.line(list(zip(xs, ys, strict=True)), fill=tone, width=width)
    fibres = ndi.gaussian_filter(np.asarray(img, dtype=np.float32), 0.9, mode="wrap")
    fibres /= fibres.std() + 1e-12
    return grain, fibres


@lru_cache(maxsize=4)
def _noise_table(seed: int) -> np.ndarray:
    """Standard-normal sensor noise, ``(*_NOISE_SHAPE, 3)`` float32, looked up modulo its shape."""
    rng = np.random.default_rng([seed, 4242])
    return rng.standard_normal((*_NOISE_SHAPE, 3)).astype(np.float32)


@lru_cache(maxsize=4)
def _dither_table(seed: int) -> np.ndarray:
    """Uniform noise in [-96, 96) for the low bits of 16-bit output."""
    rng = np.random.default_rng([seed, 1616])
    return rng.uniform(-96.0, 96.0, size=(*_NOISE_SHAPE, 3)).astype(np.float32)


def _wrap_take(table: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``table[ys % H][:, xs % W]`` without copying more than needed."""
    th, tw = table.shape[:2]
    y0, x0 = int(ys[0]) % th, int(xs[0]) % tw
    rows = table[y0 : y0 + len(ys)] if y0 + len(ys) <= th else np.take(table, ys % th, axis=0)
    if x0 + len(xs) <= tw:
        return rows[:, x0 : x0 + len(xs)]
    return np.take(rows, xs % tw, axis=1)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class PlateBackground:
    """Renders the empty plate, the lighting and the sensor noise for any region.

    Parameters
    ----------
    width, height:
        Plate size in pixels.
    dish:
        The dish's geometry.
    um_per_px:
        Scale: sets the texture's grain and fibre sizes.
    seams:
        Draw stitching seams (per-tile gain steps and faint lines on a 2000-px grid).
    seed:
        The plate's seed.
    floor:
        ``"paper"`` (filter paper) or ``"dark"`` (a dark grey dish bottom).
    """

    def __init__(
        self,
        width: int,
        height: int,
        dish: DishGeometry,
        um_per_px: float,
        seams: bool,
        seed: int,
        floor: str = "paper",
    ) -> None:
        if floor not in ("paper", "dark"):
            raise ValueError(f"floor must be 'paper' or 'dark', got {floor!r}")
        self.width, self.height = width, height
        self.dish = dish
        self.um_per_px = um_per_px
        self.seams = seams
        self.seed = seed
        rng = np.random.default_rng([seed, 31337])
        self.paper_rgb = np.array([229.0, 219.0, 197.0], np.float32) * np.array(
            rng.uniform(0.96, 1.03, 3), np.float32
        )
        self.outside_rgb = np.array([19.0, 19.0, 22.0], np.float32) * np.float32(rng.uniform(0.8, 1.3))
        self.glass_rgb = np.array([150.0, 152.0, 150.0], np.float32)
        self.tex_amp = np.float32(rng.uniform(0.025, 0.04))
        self.tex_off = rng.integers(0, _TEX, 2)
        self.noise_off = rng.integers(0, 10_000, 2)
        self.noise_sigma = np.float32(rng.uniform(0.9, 1.6))
        # low-frequency mottling of the paper: separable cosines (periods of 1-6 mm)
        self.mottle = [
            (
                float(rng.uniform(0.004, 0.01)),
                2 * math.pi * um_per_px / float(rng.uniform(1000, 6000)),
                float(rng.uniform(0, 2 * math.pi)),
                2 * math.pi * um_per_px / float(rng.uniform(1000, 6000)),
                float(rng.uniform(0, 2 * math.pi)),
            )
            for _ in range(4)
        ]
        # lighting: radial falloff and a linear gradient
        self.vignette = float(rng.uniform(0.08, 0.13))
        ang = rng.uniform(0, 2 * math.pi)
        grad = float(rng.uniform(0.04, 0.07))
        self.grad = (grad * math.cos(ang) / dish.radius, grad * math.sin(ang) / dish.radius)
        self.light_dir = np.array([-0.6, -0.8])
        # stitching seams
        self.seam_period = 2000
        self.seam_origin = rng.integers(0, self.seam_period, 2)
        n_gx = width // self.seam_period + 3
        n_gy = height // self.seam_period + 3
        self.seam_gain = np.clip(1.0 + rng.normal(0, 0.006, (n_gy, n_gx, 3)), 0.985, 1.015).astype(np.float32)
        self.seam_gain *= np.clip(1.0 + rng.normal(0, 0.008, (n_gy, n_gx, 1)), 0.98, 1.02).astype(np.float32)
        self.seam_line = np.float32(rng.uniform(0.96, 0.985))
        # texture weights: paper grain with a few fibres; a dark dish bottom is smoother, with
        # faint scratches (the fibre strokes, weaker) and a stronger relative grain (its light is dim)
        self.grain_w, self.fibre_w = np.float32(0.93), np.float32(0.35)
        self.floor = floor
        if floor == "dark":
            drng = np.random.default_rng([seed, 31338])  # its own stream: paper plates stay as they were
            tint = np.array(drng.uniform(0.97, 1.03, 3), np.float32)
            self.paper_rgb = (
                np.array([47.0, 56.0, 52.0], np.float32) * np.float32(drng.uniform(0.85, 1.25)) * tint
            )
            self.tex_amp = np.float32(drng.uniform(0.04, 0.06))
            self.grain_w, self.fibre_w = np.float32(0.8), np.float32(0.25)
            self.noise_sigma *= np.float32(1.4)
        self._lut = self._dish_lut()

    # ------------------------------------------------------------------ dish profile

    def _profiles(self, r: np.ndarray) -> list[np.ndarray]:
        """The radial profiles at radii ``r`` (linear interpolation in the 0.25-px table; below
        the table the paper, above it the dark surround)."""
        lut_r, *tables = self._lut
        pos = (r - lut_r[0]) * 4.0
        np.clip(pos, 0.0, len(lut_r) - 1.000001, out=pos)
        i = pos.astype(np.intp)
        f = (pos - i).astype(np.float32)
        out = []
        for t in tables:
            lo = t[i]
            out.append(lo + (t[i + 1] - lo) * f)
        return out

    def _dish_lut(self) -> tuple[np.ndarray, ...]:
        """Radial profiles every 0.25 px: radius, paper and glass weights, glass tone, highlight, glow."""
        d = self.dish
        r0 = max(0.0, d.paper_radius - 1.0 * d.rim_width)
        r1 = d.radius + 0.08 * d.radius
        r = np.arange(r0, r1 + 1.0, 0.25)
        wr = d.rim_width
        edge_soft = 1.2
        paper_w = 1.0 - _smoothstep((r - (d.paper_radius - edge_soft)) / (2 * edge_soft))
        shadow = 1.0 - 0.22 * _smoothstep((r - (d.paper_radius - 0.7 * wr)) / (0.7 * wr)) ** 2
        outside_w = _smoothstep((r - (d.radius - edge_soft)) / (2 * edge_soft))
        glass_w = np.clip(1.0 - paper_w - outside_w, 0.0, 1.0)
        t = np.clip((r - d.paper_radius) / wr, 0.0, 1.0)
        tone = 0.66 + 0.18 * t - 0.22 * np.exp(-(((t - 0.55) / 0.2) ** 2))
        highlight = 0.55 * np.exp(-(((t - 0.22) / 0.06) ** 2)) + 0.8 * np.exp(-(((t - 0.9) / 0.045) ** 2))
        fade = np.exp(-np.maximum(r - d.radius, 0.0) / (0.01 * d.radius))
        glow = 0.35 * np.clip((fade - fade[-1]) / (1.0 - fade[-1]), 0.0, 1.0) * outside_w  # 0 at the end
        return (
            r.astype(np.float64),
            (paper_w * shadow).astype(np.float32),
            glass_w.astype(np.float32),
            tone.astype(np.float32),
            highlight.astype(np.float32),
            glow.astype(np.float32),
        )

    # ------------------------------------------------------------------ rendering

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The empty plate (before lighting) for a region: ``(h, w, 3)`` float32, 0..255 scale."""
        d = self.dish
        xs = np.arange(x0, x0 + w)
        ys = np.arange(y0, y0 + h)
        dx = (xs - d.cx).astype(np.float64)
        dy = (ys - d.cy).astype(np.float64)
        near_x = np.clip(d.cx, x0, x0 + w - 1) - d.cx
        near_y = np.clip(d.cy, y0, y0 + h - 1) - d.cy
        r_min = math.hypot(near_x, near_y)
        r_max = math.hypot(max(abs(dx[0]), abs(dx[-1])), max(abs(dy[0]), abs(dy[-1])))
        lut_r = self._lut[0]
        out = np.empty((h, w, 3), np.float32)
        if r_min > lut_r[-1]:
            out[:] = self.outside_rgb
            return out
        paper = self._paper_lum(xs, ys)
        if r_max < lut_r[0]:
            np.multiply(paper[..., None], self.paper_rgb, out=out)
            return out
        r = np.sqrt(np.add.outer(dy * dy, dx * dx))
        pw, gw, tn, hl, gl = self._profiles(r)
        ow = np.float32(1.0) - pw - gw
        lx, ly = self.light_dir
        facing = (np.add.outer(dy * ly, dx * lx) / np.maximum(r, 1.0)).astype(np.float32)
        hl *= np.float32(0.55) + np.float32(0.45) * facing
        # the glass shows the paper beneath, darker and greyer, plus its highlights
        seen = paper[..., None] * (self.paper_rgb * np.float32(0.75) + self.glass_rgb * np.float32(0.25))
        glass = seen * tn[..., None] + np.float32(235.0) * hl[..., None]
        out[:] = paper[..., None] * self.paper_rgb * pw[..., None]
        out += glass * gw[..., None]
        out += (self.outside_rgb + np.float32(90.0) * gl[..., None]) * ow[..., None]
        return out

    def _paper_lum(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Relative brightness of the dish floor: grain and fibre (or scratch) texture plus
        low-frequency mottling."""
        grain, fibres = _paper_texture(self.seed, float(self.um_per_px))
        oy, ox = int(self.tex_off[1]), int(self.tex_off[0])
        lum = _wrap_take(grain, ys + oy, xs + ox) * (self.tex_amp * self.grain_w)
        lum += _wrap_take(fibres, ys + oy, xs + ox) * (self.tex_amp * self.fibre_w)
        lum += np.float32(1.0)
        fx = xs.astype(np.float64)
        fy = ys.astype(np.float64)
        for amp, kx, px, ky, py in self.mottle:
            cx = (amp * np.cos(kx * fx + px)).astype(np.float32)
            cy = np.cos(ky * fy + py).astype(np.float32)
            lum += np.multiply.outer(cy, cx)
        return lum

    def apply_lighting(self, img: np.ndarray, x0: int, y0: int) -> None:
        """Multiply a region in place by the illumination: falloff, gradient and seams.

        Everything grey is folded into one ``(h, w)`` factor; the seams' per-tile colour gains
        are applied with it, block by block, in a single pass over the three channels.
        """
        h, w = img.shape[:2]
        d = self.dish
        xs = np.arange(x0, x0 + w)
        ys = np.arange(y0, y0 + h)
        dx = (xs - d.cx).astype(np.float64)
        dy = (ys - d.cy).astype(np.float64)
        inv_r2 = 1.0 / (d.radius * d.radius)
        fall_x = (dx * dx * inv_r2 * self.vignette).astype(np.float32)
        fall_y = (dy * dy * inv_r2 * self.vignette).astype(np.float32)
        grad_x = (dx * self.grad[0]).astype(np.float32)
        grad_y = (dy * self.grad[1]).astype(np.float32)
        light = np.float32(1.0) - np.add.outer(fall_y, fall_x)
        light *= np.float32(1.0) + np.add.outer(grad_y, grad_x)
        if not self.seams:
            img *= light[..., None]
            return
        period = self.seam_period
        ox, oy = int(self.seam_origin[0]), int(self.seam_origin[1])
        px, py = (xs - ox) % period, (ys - oy) % period
        # each camera tile of the mosaic was lit from its own centre; blends leave faint lines
        u = (px + 0.5) / period - 0.5
        v = (py + 0.5) / period - 0.5
        tile_x = (1.0 - 0.03 * u * u).astype(np.float32)
        tile_y = (1.0 - 0.03 * v * v).astype(np.float32)
        tile_x[px < 2] *= self.seam_line
        tile_y[py < 2] *= self.seam_line
        light *= np.multiply.outer(tile_y, tile_x)
        # per-tile gain steps
        cx = (xs - ox + period) // period
        cy = (ys - oy + period) // period
        for gy in np.unique(cy):
            rows = np.flatnonzero(cy == gy)
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            for gx in np.unique(cx):
                cols = np.flatnonzero(cx == gx)
                c0, c1 = int(cols[0]), int(cols[-1]) + 1
                img[r0:r1, c0:c1] *= light[r0:r1, c0:c1, None] * self.seam_gain[gy, gx]

    def finish(self, img: np.ndarray, x0: int, y0: int, bit_depth: int) -> np.ndarray:
        """Add sensor noise and quantise a lit region to ``uint8`` or ``uint16`` (in place on img)."""
        h, w = img.shape[:2]
        ys = np.arange(y0, y0 + h) + int(self.noise_off[1])
        xs = np.arange(x0, x0 + w) + int(self.noise_off[0])
        noise = _wrap_take(_noise_table(self.seed), ys, xs)
        if bit_depth == 8:
            img += noise * self.noise_sigma
            img += np.float32(0.5)
            np.clip(img, 0.0, 255.0, out=img)
            return img.astype(np.uint8)
        if bit_depth == 16:
            img *= np.float32(257.0)
            img += noise * (self.noise_sigma * np.float32(257.0))
            img += _wrap_take(_dither_table(self.seed), ys, xs)
            img += np.float32(0.5)
            np.clip(img, 0.0, 65535.0, out=img)
            return img.astype(np.uint16)
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
