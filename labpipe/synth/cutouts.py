"""Cut-outs of one animal photographed on a plain background of either polarity.

:func:`extract_plain_cutout` is the general companion of :func:`labpipe.synth.specimens.extract_cutout`
(which is specialised for pinned beetles on a light background with a label and a pin). It suits
crops that hold one animal on a plain, roughly uniform background, light or dark: springtails cut
from plate scans (pale animals on a dark dish, ``../shared/data/collembola/positive``) or a well
photographed from above, where only a central disc of the well floor is plain
(``../shared/data/bioscan-wells/single``, ``disc=``).

The background colour is the median of a reference ring (the crop's border, or the rim of the
central disc); every pixel's colour distance from it is thresholded by Otsu's method (Otsu 1979,
IEEE Trans. SMC 9: 62-66), never below a floor set by the ring's own noise, with hysteresis so that
faint legs and antennae joined to the body are kept. The animal is the largest component, holes
filled. A crop is refused (None) where that is not clean: the object runs into the reference ring,
is too small, or comes in pieces.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from labpipe.synth.specimens import Cutout, _fill_holes, _largest, _open, _to_u8, feathered_alpha

__all__ = ["WELL_DISC", "extract_plain_cutout", "otsu_threshold", "plain_cutout_reason"]

WELL_DISC = 0.62
"""Diameter of the plain central disc of a microplate well photo, as a fraction of its shorter side."""

_MIN_SIDE = 16
_MIN_AREA = 40
_FLOOR_ABS = 0.04  # colour distance (0..1 RGB) below which nothing is foreground
_FLOOR_NOISE = 4.0  # ... nor below this many times the reference ring's median distance
_SMOOTH = 0.7  # sigma (px) of the Gaussian smoothing of the colour distance
_MAX_SPREAD = 0.1  # median colour distance of the reference ring from its median: above, not plain
_LOW = 0.45  # hysteresis: weak foreground is above this fraction of the strong threshold


def extract_plain_cutout(rgb: np.ndarray, name: str = "", *, disc: float | None = None) -> Cutout | None:
    """Segment the one animal in a crop with a plain background; None where it is not clean.

    Parameters
    ----------
    rgb:
        ``(h, w, 3)`` image, 0..255 (integer or float).
    name:
        Carried into the result (the source file name).
    disc:
        None: the crop's border is the background reference and the animal must lie inside the
        crop. A number in ``(0, 1]``: only the central disc of that diameter (a fraction of the
        shorter side) is looked at, its rim is the reference, and the animal must lie inside it
        (for wells photographed from above, whose bright, structured rim is not background).

    Returns
    -------
    Cutout or None
        The animal's colour (unchanged), alpha (mask ``>= 128``, feathered by a fraction of a
        pixel), body (the mask opened to drop legs and antennae) and body length (major axis of
        the body, ``4 * sqrt`` of the largest eigenvalue of its pixel covariance, as for beetles).
        None where the crop is too small, the object touches too much of the reference ring, is
        too small, or the mask is fragmented; :func:`plain_cutout_reason` says which.

    Notes
    -----
    The background colour is the per-channel median of a ring 3 % of the shorter side wide (at
    least 1 px); the foreground threshold on the colour distance from it is Otsu's, at least
    ``max(0.04, 4 * median ring distance)``. Weak foreground (above 0.45 of that threshold) joined
    to the strong one is kept (hysteresis), which holds thin, blurred appendages.

    Examples
    --------
    A pale ellipse (628 px, 50 px long) on a dark crop; its outline comes back about half a pixel
    outside the hard edge:

    >>> yy, xx = np.mgrid[0:60, 0:80]
    >>> img = np.full((60, 80, 3), 40.0)
    >>> img[((xx - 40) / 25.0) ** 2 + ((yy - 30) / 8.0) ** 2 <= 1] = 220.0
    >>> cut = extract_plain_cutout(img, "ellipse")
    >>> int((cut.alpha >= 128).sum()), round(cut.body_length)
    (703, 48)

    A bar running across the crop is cut by its border:

    >>> img = np.full((60, 80, 3), 40.0)
    >>> img[20:40] = 220.0
    >>> extract_plain_cutout(img) is None, plain_cutout_reason(img)[:31]
    (True, "object cut by the crop's border")
    """
    return _extract_plain(rgb, name, disc)[0]


def plain_cutout_reason(rgb: np.ndarray, *, disc: float | None = None) -> str:
    """Why :func:`extract_plain_cutout` refuses a crop (``"ok"`` where it accepts it).

    >>> plain_cutout_reason(np.zeros((8, 8, 3)))
    'crop smaller than 16 px (8 x 8)'
    """
    return _extract_plain(rgb, "", disc)[1]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in ``[0, 1]``: the split that maximises the between-class variance.

    Where several splits tie (two-valued data: every split between the two values is as good),
    the middle of the tied range is taken, so a synthetic two-tone image splits halfway.

    References
    ----------
    N. Otsu (1979), A threshold selection method from gray-level histograms. IEEE Trans. Systems,
    Man, and Cybernetics 9(1): 62-66.

    Examples
    --------
    >>> round(otsu_threshold(np.r_[np.zeros(50), np.full(10, 0.8)]), 2)
    0.4
    >>> otsu_threshold(np.full(5, 0.3))  # one value: nothing to split, that value
    0.3
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("otsu_threshold needs at least one value, got an empty array")
    if values.min() == values.max():
        return float(values[0])
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    ties = np.flatnonzero(between >= between.max() * (1.0 - 1e-9))
    # the split after bin k lies at its upper edge; the middle of the tied splits
    return float((edges[ties[0] + 1] + edges[ties[-1] + 1]) / 2)


def _reference_ring(h: int, w: int, disc: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The pixels looked at, and the ring of them that is background by assumption."""
    b = max(1, round(0.03 * min(h, w)))
    if disc is None:
        valid = np.ones((h, w), bool)
        ring = np.zeros((h, w), bool)
        ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
        return valid, ring
    radius = disc * min(h, w) / 2.0
    yy, xx = np.ogrid[0:h, 0:w]
    r = np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0)
    return r <= radius, (r <= radius) & (r > radius - b)


def _extract_plain(rgb: np.ndarray, name: str, disc: float | None) -> tuple[Cutout | None, str]:
    """:func:`extract_plain_cutout`, with the reason a crop was refused."""
    img = np.asarray(rgb, dtype=np.float32)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"expected an (h, w, 3) image, got shape {img.shape}")
    if disc is not None and not 0.0 < disc <= 1.0:
        raise ValueError(f"disc must be within (0, 1], got {disc}")
    img = img[..., :3]
    h, w = img.shape[:2]
    if min(h, w) < _MIN_SIDE:
        return None, f"crop smaller than {_MIN_SIDE} px ({h} x {w})"
    valid, ring = _reference_ring(h, w, disc)
    where = "the crop's border" if disc is None else "the disc's rim"
    a = img / np.float32(255.0)
    # the reference: the border ring of a crop; the whole disc of a well (the animal is small in it)
    reference = ring if disc is None else valid
    bg = np.median(a[reference], axis=0)
    # lightly smoothed: JPEG blocks and sensor noise must not fray the outline
    dist = ndi.gaussian_filter(np.sqrt(((a - bg) ** 2).sum(axis=-1)), _SMOOTH)
    dist[~valid] = 0.0
    spread = float(np.median(dist[reference]))
    if spread > _MAX_SPREAD:
        return None, f"background not plain: {where} differs from its median colour by {spread:.2f}"
    floor = max(_FLOOR_ABS, _FLOOR_NOISE * spread)
    strong_thr = max(floor, otsu_threshold(np.clip(dist[valid], 0.0, 1.0)))
    strong = dist > strong_thr
    if not strong.any():
        return None, "no object differs from the background"
    mask = _hysteresis(strong, dist > max(floor, _LOW * strong_thr))
    area = int(mask.sum())
    if area < _MIN_AREA:
        return None, f"object of {area} px is smaller than {_MIN_AREA} px"

    # an appendage may end at the crop's edge (crops are often the animal's own box); a body may not
    half_width = float(ndi.distance_transform_edt(np.pad(mask, 1)).max())
    run, total = _contact(mask, ring if disc is not None else None)
    if run > max(2.0, half_width) or total > max(4.0, 3.0 * half_width):
        return None, f"object cut by {where} (contact {total} px, longest {run} px)"
    pieces = _pieces(strong & ~mask, ring, min_size=max(6.0, 0.03 * area))
    if pieces > 0.2 * area:
        return None, f"mask fragmented: pieces of {pieces} px beside a {area} px object"
    body, why = _body(mask, half_width)
    if body is None:
        return None, why
    # one polarity: a dark animal on a light floor with bright glare joined to it (or the reverse);
    # a grey step of s in each channel is a colour distance of s * sqrt(3)
    lum = a.mean(axis=-1) - float(bg.mean())
    sign = 1.0 if float(np.median(lum[body])) >= 0 else -1.0
    opposite = int((mask & (sign * lum < -floor / math.sqrt(3.0))).sum())
    if opposite > 0.05 * area:
        return None, f"{opposite / area:.0%} of the mask has the opposite polarity (glare or a bubble)"
    return _cutout(img, mask & valid, body, name), "ok"


def _hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """The largest strong component grown over the weak foreground joined to it, holes filled.

    >>> strong = np.zeros((5, 7), bool); strong[2, 1:3] = True
    >>> weak = strong.copy(); weak[2, 3:5] = True; weak[0, 6] = True
    >>> _hysteresis(strong, weak).astype(int)[2]
    array([0, 1, 1, 1, 1, 0, 0])
    """
    main = _largest(strong)
    lab, _ = ndi.label(weak | main, np.ones((3, 3), bool))
    keep = np.unique(lab[main])
    return _fill_holes(np.isin(lab, keep[keep > 0]))


def _pieces(others: np.ndarray, ring: np.ndarray, min_size: float) -> int:
    """Pixels in components of ``others`` that are not specks and do not reach the reference ring.

    Neighbours cut by the crop's border reach it and are not counted; pieces of a broken-up animal
    and debris lying wholly in the crop are.
    """
    lab, n = ndi.label(others)
    if n == 0:
        return 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    sizes[np.unique(lab[ring])] = 0
    return int(sizes[sizes >= min_size].sum())


def _body(mask: np.ndarray, half_width: float) -> tuple[np.ndarray | None, str]:
    """The body: ``mask`` opened by a disc of 0.6 of its half-width (legs and antennae drop out).

    None (with the reason) where the opening leaves two sizeable bodies (a neighbour or debris
    joined by an appendage) or less than half the mask: legs, antennae and wings are thin, so
    more than that beside the body is a fibre, a halo, or a second animal lying against the first
    (their union is too wide for the opening to part them, but its wide part is only one body).
    """
    opened = _open(mask, max(1.0, 0.6 * half_width))
    lab, n = ndi.label(opened)
    if n > 1:
        sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
        if sizes[1] > 0.1 * sizes[0]:
            return None, f"two bodies joined ({sizes[0]} and {sizes[1]} px): a neighbour or debris"
    body = _largest(opened)
    if body.sum() < max(3, 0.5 * mask.sum()):
        return None, f"body is {body.sum() / mask.sum():.0%} of the mask (a fibre, a halo or a neighbour)"
    return body, "ok"


def _cutout(img: np.ndarray, mask: np.ndarray, body: np.ndarray, name: str) -> Cutout:
    """The cut-out: colour, feathered alpha and body in the mask's box (plus 3 px), and body length."""
    ys, xs = np.nonzero(body)
    evals = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)))
    body_length = 4.0 * math.sqrt(max(float(evals[-1]), 1e-9))
    alpha, crop = feathered_alpha(mask)
    return Cutout(
        name=name,
        rgb=_to_u8(img[crop]),
        alpha=_to_u8(alpha[crop] * 255.0),
        body=body[crop],
        body_length=body_length,
    )


def _contact(mask: np.ndarray, ring: np.ndarray | None) -> tuple[int, int]:
    """Where ``mask`` meets the reference: (longest run of contact, total contact) in pixels.

    Without a ring the contact is the mask on the crop's outermost rows and columns, walked round
    the border as one closed line; with a ring it is the mask inside the ring, and the longest
    run is the largest connected piece of it.
    """
    if ring is not None:
        touch = mask & ring
        lab, n = ndi.label(touch, np.ones((3, 3), bool))
        return (int(np.bincount(lab.ravel())[1:].max()) if n else 0), int(touch.sum())
    line = np.concatenate([mask[0, :-1], mask[:-1, -1], mask[-1, :0:-1], mask[:0:-1, 0]])
    total = int(line.sum())
    if total == 0:
        return 0, 0
    if total == line.size:
        return total, total
    start = int(np.argmin(line))  # walk from a gap so that runs do not wrap
    rolled = np.roll(line, -start).astype(np.int8)
    edges = np.diff(np.concatenate([[0], rolled, [0]]))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    return int(runs.max()), total
