"""Which pixels stand out from the paper, judged against the paper's own local texture.

Pure functions on arrays, used by :class:`labpipe.detect.classical.ClassicalDetector`:

* :func:`choose_polarity` -- dark animals on light paper, or pale and dark ones on a dark bottom.
* :func:`local_noise` -- a map of the background's noise level, block by block, from the bright
  side of the signed darkening (:func:`labpipe.detect.segment.half_normal_noise` made local): a
  textured sheet or a well floor with rings is noisier than smooth filter paper, and one global
  level either drowns small animals on the smooth part or fires on texture elsewhere.
* :func:`object_strength` -- the strength averaged over the scale of a small specimen with a
  median filter [1]_: isolated specks and fibres of the paper's texture (a few pixels) vanish,
  bodies stay.
* :func:`grow_from_seeds` -- hysteresis [2]_ whose low threshold is relative to each seed's own
  peak strength, so that an object's extent ends at its visible edge (a fraction of its own
  contrast), not in its shadow or in the texture around it.
* :func:`evidence` -- a size-aware detection statistic: contrast over the noise, times the square
  root of the area in units of the smallest specimen [3]_ (averaging over more pixels lowers the
  noise of the mean as its square root).

References
----------
.. [1] J. W. Tukey, *Exploratory Data Analysis* (1977); T. S. Huang et al., "A fast
   two-dimensional median filtering algorithm", IEEE ASSP 27 (1979): the median removes impulses
   narrower than half its window and keeps edges.
.. [2] J. Canny, "A computational approach to edge detection", IEEE PAMI 8 (1986).
.. [3] A. Rose, "The sensitivity performance of the human eye on an absolute scale", JOSA 38 (1948):
   an object is visible when its contrast times the square root of its area over the noise
   exceeds a constant (the Rose criterion).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from labpipe.detect.background import block_medians, nan_median_filter, upsample_grid
from labpipe.detect.extent import enlarge

__all__ = ["choose_polarity", "evidence", "grow_from_seeds", "local_noise", "object_strength"]


def choose_polarity(
    luminance: np.ndarray, mask: np.ndarray | None = None, *, blocks: int = 8, dark_level: float = 0.4
) -> str:
    """``"dark"`` (light paper: animals are darker or more coloured than it) or ``"both"`` (a dark
    bottom: pale animals are brighter than it, dark ones darker).

    The background level is the median, over ``blocks`` x ``blocks`` cells, of each cell's 90th
    percentile of luminance (within ``mask``): paper is the brightest common level, present in
    most cells even of a crowded dish, where a histogram's mode would be the beetles. Paper lit
    from above is the whitest diffuse thing in the picture, so on it anything brighter is glare; a
    background below ``dark_level`` (luminance in [0, 1]) leaves room for pale animals.

    Examples
    --------
    >>> bg = np.full((64, 64), 0.2); bg[20:30, 20:30] = 0.8  # a pale springtail on a dark dish
    >>> choose_polarity(bg)
    'both'
    >>> choose_polarity(1.0 - bg)  # a dark beetle on white paper
    'dark'
    >>> crowded = np.full((64, 64), 0.1); crowded[::8, :] = 0.85; crowded[:, ::8] = 0.85
    >>> choose_polarity(crowded)  # dark beetles cover most of the paper: it is still paper
    'dark'
    """
    lum = np.asarray(luminance, dtype=np.float64)
    if lum.ndim != 2:
        raise ValueError(f"luminance must be 2-D; given shape {lum.shape}")
    m = np.ones(lum.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    h, w = lum.shape
    levels = []
    for i in range(blocks):
        for j in range(blocks):
            cell = (
                slice(i * h // blocks, (i + 1) * h // blocks),
                slice(j * w // blocks, (j + 1) * w // blocks),
            )
            values = lum[cell][m[cell]]
            if values.size >= 4:
                levels.append(float(np.percentile(values, 90)))
    if not levels:
        return "dark"
    return "both" if float(np.median(levels)) < dark_level else "dark"


def local_noise(
    signed: np.ndarray,
    mask: np.ndarray,
    block: int,
    *,
    floor: float = 1e-3,
    min_coverage: float = 0.05,
    paper_cut: float | None = None,
) -> np.ndarray:
    """Per-pixel noise level (standard deviation) of the background, estimated block by block.

    ``signed`` is the darkening relative to the background (positive: darker). In each ``block``
    x ``block`` cell, the pixels of ``mask`` that are *not* darker than the background
    (``signed <= 0``) are noise alone, whatever the crowding: ``sigma = 1.4826 * median(|signed|)``
    over them (a half-normal's median is 0.6745 sigma). Cells with too few such pixels take the
    median of their neighbours; the grid is smoothed by a 3 x 3 median and interpolated
    bilinearly. Never below ``floor``.

    With ``paper_cut``, "not darker" is judged against the paper's own level in each block, the
    median of the pixels less than ``paper_cut`` darker, rather than against 0: where specimens
    cover part of a block the background estimate sits a few percent darker than the paper, and
    that offset would otherwise be counted as noise (a 4 % offset on paper of 1 % texture reads
    as 5 % noise, and small animals no longer stand out against it).

    Examples
    --------
    Smooth paper on the left, a textured sheet on the right:

    >>> rng = np.random.default_rng(0)
    >>> s = rng.normal(0, 0.01, (64, 128)); s[:, 64:] *= 5
    >>> sig = local_noise(s, np.ones(s.shape, bool), 16)
    >>> round(float(sig[32, 8]), 2), round(float(sig[32, 120]), 2)
    (0.01, 0.05)
    """
    v = np.asarray(signed, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if v.shape != m.shape or v.ndim != 2:
        raise ValueError(f"signed and mask must be 2-D and of one shape; given {v.shape} and {m.shape}")
    if block < 2:
        raise ValueError(f"block must be >= 2; given {block}")
    level = np.zeros_like(v)
    if paper_cut is not None:
        # the paper's own level per block (the background estimate may sit a few percent off
        # it where specimens cover part of a block): the median of what is not clearly an object
        paper = m & (v < np.float32(paper_cut))
        lv = block_medians(v[..., None], paper, block, min_coverage=min_coverage)
        lv = np.where(np.isnan(lv), np.nanmedian(lv) if not np.isnan(lv).all() else 0.0, lv)
        level = upsample_grid(nan_median_filter(lv, 3), block, v.shape)[..., 0].astype(np.float32)
    quiet = m & (v <= level)
    grid = block_medians(np.abs(v - level)[..., None], quiet, block, min_coverage=min_coverage) * 1.4826
    for size in (3, 5, 9, 17):
        if not np.isnan(grid).any():
            break
        grid = np.where(np.isnan(grid), nan_median_filter(grid, size), grid)
    if np.isnan(grid).all():
        return np.full(v.shape, floor, dtype=np.float32)
    grid = np.where(np.isnan(grid), np.nanmedian(grid), grid)
    grid = nan_median_filter(grid, 3)
    return np.maximum(upsample_grid(grid, block, v.shape)[..., 0], np.float32(floor))


def object_strength(strength: np.ndarray, size: int) -> np.ndarray:
    """``strength`` median-filtered over ``size`` x ``size`` pixels, then lightly smoothed.

    Texture specks and fibres narrower than about ``size / 2`` are removed; a body wider than
    that keeps its strength.

    Examples
    --------
    >>> s = np.zeros((20, 20), np.float32); s[5, 5] = 1.0; s[10:18, 10:18] = 0.5
    >>> o = object_strength(s, 5)
    >>> float(o[5, 5]) < 0.05, float(o[14, 14]) > 0.45
    (True, True)
    """
    if size < 1:
        raise ValueError(f"size must be >= 1; given {size}")
    s = np.asarray(strength, dtype=np.float32)
    if size > 1:
        s = ndi.median_filter(s, size=size | 1)
    return ndi.gaussian_filter(s, 1.0)


def grow_from_seeds(
    strength: np.ndarray,
    seeds: np.ndarray,
    peak: np.ndarray,
    noise_floor: np.ndarray | float,
    *,
    edge_fraction: float = 0.35,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Objects: the pixels connected to a seed whose strength exceeds that seed's edge threshold.

    Each pixel is judged against the threshold of its nearest seed, ``max(noise_floor,
    edge_fraction * peak of that seed)``; the components that hold a seed are kept. The visible
    edge of a blurred object lies where its contrast has fallen to a fraction of its own [2]_: a
    dark beetle's soft shadow falls below a third of the beetle's contrast and stays out; a pale
    moth, whose own contrast is low, keeps its faint wing margins.

    Parameters
    ----------
    strength : (H, W) float array (lightly smoothed).
    seeds : (H, W) bool array.
    peak : (H, W) float array: per pixel, a seed strength statistic (only its values on seeds are
        used; each seed component takes its maximum).
    noise_floor : float or (H, W) array: the lowest threshold anywhere (a multiple of the noise).
    edge_fraction : float
        Edge threshold as a fraction of the seed's peak strength.
    mask : optional (H, W) bool array limiting the objects.

    Examples
    --------
    A dark disc with a faint halo (its shadow): the halo is not part of the object.

    >>> yy, xx = np.mgrid[:40, :40]
    >>> r = np.hypot(yy - 20, xx - 20)
    >>> s = np.where(r < 8, 0.8, np.where(r < 12, 0.15, 0.0))
    >>> obj = grow_from_seeds(s, s > 0.5, s, 0.05)
    >>> bool(obj[20, 27]), bool(obj[20, 30])
    (True, False)
    """
    s = np.asarray(strength, dtype=np.float32)
    sd = np.asarray(seeds, dtype=bool)
    labels, n = ndi.label(sd)
    if n == 0:
        return np.zeros(s.shape, dtype=bool)
    peaks = _label_maximum(np.asarray(peak, dtype=np.float32), labels, n, sd)
    nearest = _nearest_label(labels)
    threshold = np.maximum(
        np.asarray(noise_floor, dtype=np.float32),
        np.float32(edge_fraction) * np.concatenate([[np.inf], peaks]).astype(np.float32)[nearest],
    )
    # a seed map made at a coarser scale may overhang the object: seeds count only where the
    # strength reaches half the edge threshold
    grown = (s > threshold) | (sd & (s > np.float32(0.5) * threshold))
    if mask is not None:
        grown &= np.asarray(mask, dtype=bool)
    comp, _ = ndi.label(grown)
    keep = np.unique(comp[sd & grown])
    return np.isin(comp, keep[keep > 0])


def _nearest_label(labels: np.ndarray, max_pixels: int = 1_000_000) -> np.ndarray:
    """Each pixel's nearest labelled pixel's label (a Voronoi partition of the labels).

    On images larger than ``max_pixels`` it is found on a grid twice as coarse (a seed pixel of
    every 2 x 2 block stands for it) and enlarged: the partition's boundaries move by a pixel.
    """
    step = 2 if labels.size > max_pixels else 1
    coarse = labels
    if step > 1:
        h, w = labels.shape
        padded = np.pad(labels, ((0, h % 2), (0, w % 2)))
        coarse = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).max(axis=(1, 3))
    _, (iy, ix) = ndi.distance_transform_edt(coarse == 0, return_indices=True)
    nearest = enlarge(coarse[iy, ix], step, labels.shape)
    return np.where(labels > 0, labels, nearest)


def _label_maximum(values: np.ndarray, labels: np.ndarray, n: int, where: np.ndarray) -> np.ndarray:
    """Per label 1..n, the maximum of ``values`` over the pixels of ``where`` (labels there > 0).

    Only the selected pixels are visited: several times faster than ``ndimage.maximum`` on a
    large image with sparse labels.
    """
    out = np.full(n + 1, -np.inf, dtype=np.float64)
    np.maximum.at(out, labels[where], values[where])
    return out[1:]


def evidence(contrast: float, area: float, unit_area: float) -> float:
    """Size-aware detection statistic: ``contrast * sqrt(area / unit_area)`` [3]_.

    ``contrast`` is the object's strength over the detection threshold (median over its seed),
    ``area`` its seed area, ``unit_area`` the area of the smallest specimen's body. A large pale
    moth passes with a contrast that would be noise in a speck.

    Examples
    --------
    >>> evidence(2.0, 4.0, 1.0)
    4.0
    >>> evidence(2.0, 0.25, 1.0)
    1.0
    """
    if unit_area <= 0:
        raise ValueError(f"unit_area must be > 0; given {unit_area}")
    return float(contrast) * float(np.sqrt(max(float(area), 0.0) / unit_area))
