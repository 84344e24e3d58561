"""Foreground segmentation of specimens on a plain background, and separation of touching ones.

Pure functions on arrays:

* :func:`foreground_strength` -- how much each pixel differs from the background, after flat-field
  division [1]_: darkening and change of colour count, brightening (glare, reflections) does not.
* :func:`robust_noise` -- median and MAD-based standard deviation [2]_ of values in the dish;
  :func:`half_normal_noise` -- the same from the bright side only, unaffected by crowding.
* :func:`fill_small_holes` -- reflections inside a body filled, paper enclosed by legs kept.
* :func:`open_mask` -- exact Euclidean opening by a disc, through the distance transform [4]_:
  what survives is the specimens' *bodies*; legs, antennae and fibres thinner than the disc do not.
* :func:`find_bodies` -- an opening relative to each blob's own thickness, so legs and antennae
  of specimens of any size are not taken for bodies; :func:`colour_distinct_parts` -- what that
  opening removed, thick enough for a body and unlike every body in colour, is a small animal
  touching a large one (a springtail against a beetle).
* :func:`split_touching` -- distance transform + markers + watershed [5]_ [6]_, with guards
  against cutting one specimen in pieces: merging regions joined by a wide neck [7]_ or lying in
  line along one body's axis.
* :func:`assign_to_bodies` -- legs and antennae go back to the body they grow from.

References
----------
.. [1] J. C. Russ, *The Image Processing Handbook*, 6th ed. (2011), ch. 4: flat-field correction by
   dividing by the background.
.. [2] F. R. Hampel, "The influence curve and its role in robust estimation", JASA 69 (1974): the
   median absolute deviation, scaled by 1.4826, estimates the standard deviation of Gaussian noise.
.. [4] P. Soille, *Morphological Image Analysis*, 2nd ed. (2003), ch. 4: opening by a disc as the
   dilation of the set of points farther than the radius from the background.
.. [5] S. Beucher and C. Lantuejoul, "Use of watersheds in contour detection" (1979); L. Vincent and
   P. Soille, "Watersheds in digital spaces", IEEE PAMI 13 (1991).
.. [6] N. Malpica et al., "Applying watershed algorithms to the segmentation of clustered nuclei",
   Cytometry 28 (1997): distance-transform markers for touching convex objects.
.. [7] C. Wählby et al., "Combining intensity, edge and shape information for 2D and 3D segmentation
   of cell nuclei in tissue sections", J. Microscopy 215 (2004): merging watershed regions whose
   shared boundary is strong/wide relative to the objects.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import convex_hull_image
from skimage.segmentation import expand_labels, watershed

__all__ = [
    "assign_to_bodies",
    "colour_distinct_parts",
    "fill_small_holes",
    "find_bodies",
    "foreground_strength",
    "half_normal_noise",
    "open_mask",
    "robust_noise",
    "split_touching",
]


def foreground_strength(
    image: np.ndarray, background: np.ndarray, *, chroma_weight: float = 1.0
) -> np.ndarray:
    """Per-pixel difference from the background: darkening and colour change, not brightening.

    With ``r_c = image_c / background_c`` (flat-field division [1]_), ``lum = mean_c r_c``:

        strength = sqrt( max(1 - lum, 0)^2 + (chroma_weight * ||r - lum||)^2 )   where lum < 1, else 0

    so a pixel 30 % darker than the paper scores 0.3; a pale yellow specimen that is only slightly
    darker still scores through its colour; anything brighter than the paper (glare, reflections)
    scores 0, even when its channel ratios differ (white glare on a bluish well floor).

    Parameters
    ----------
    image, background : (H, W, C) float arrays, same units (C = 1 or 3).
    chroma_weight : float
        Weight of colour change relative to darkening.

    Returns
    -------
    (H, W) float32 array, >= 0

    Examples
    --------
    >>> bg = np.ones((1, 3, 3))
    >>> img = np.array([[[0.7, 0.7, 0.7], [1.3, 1.3, 1.3], [1.0, 0.9, 0.7]]])
    >>> [round(float(v), 2) for v in foreground_strength(img, bg)[0]]
    [0.3, 0.0, 0.25]
    """
    img = np.asarray(image, dtype=np.float32)
    bg = np.asarray(background, dtype=np.float32)
    if img.shape != bg.shape or img.ndim != 3:
        raise ValueError(f"image and background must both be (H, W, C); given {img.shape} and {bg.shape}")
    ratio = img / np.maximum(bg, np.float32(1e-6))
    channels = [ratio[..., c] for c in range(ratio.shape[2])]
    # Channel sums written out: numpy's mean over a short last axis is several times slower.
    lum = channels[0].copy()
    for ch in channels[1:]:
        lum += ch
    lum *= np.float32(1.0 / len(channels))
    dark = np.maximum(np.float32(1.0) - lum, np.float32(0.0))
    if img.shape[2] == 1 or chroma_weight == 0:
        return dark
    chroma2 = np.zeros_like(lum)
    for ch in channels:
        d = ch - lum
        chroma2 += d * d
    # Glare adds white light: it brightens and shifts the channel ratios of a tinted paper. A pixel
    # brighter than its background is therefore never foreground, whatever its colour.
    chroma2[lum >= 1.0] = 0.0
    return np.sqrt(dark * dark + np.float32(chroma_weight**2) * chroma2)


def robust_noise(
    values: np.ndarray, mask: np.ndarray | None = None, *, max_samples: int = 250_000
) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 x MAD [2]_) of ``values`` inside ``mask``.

    At most ``max_samples`` evenly spaced samples are used. An empty selection returns ``(0, 0)``.

    Examples
    --------
    >>> robust_noise(np.array([0.0, 1.0, 2.0, 3.0, 100.0]))
    (2.0, 1.4826)
    """
    v = np.asarray(values)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != v.shape:
            raise ValueError(f"mask shape {m.shape} does not match values shape {v.shape}")
        v = v[m]
    v = v.ravel()
    if v.size == 0:
        return 0.0, 0.0
    if v.size > max_samples:
        v = v[:: v.size // max_samples]
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return med, 1.4826 * mad


def half_normal_noise(
    signed: np.ndarray, mask: np.ndarray | None = None, *, max_samples: int = 250_000
) -> float:
    """Noise standard deviation from the *bright* side of a signed difference image.

    ``signed`` is the darkening relative to the background (positive: darker). Specimens only
    darken, so on a crowded plate they shift the median and inflate the MAD of all pixels; pixels
    brighter than their background (``signed <= 0``) are noise alone. Their absolute values
    follow a half-normal distribution, whose median is 0.6745 sigma [2]_, hence
    ``sigma = 1.4826 * median(|signed| where signed <= 0)``. Returns 0 when no pixel is <= 0.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v = rng.normal(0, 0.02, 100_000)
    >>> v[:40_000] = 0.5  # 40 % of the pixels are dark specimens
    >>> round(half_normal_noise(v), 3)
    0.02
    """
    v = np.asarray(signed)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != v.shape:
            raise ValueError(f"mask shape {m.shape} does not match values shape {v.shape}")
        v = v[m]
    v = v.ravel()
    if v.size > max_samples:
        v = v[:: v.size // max_samples]
    neg = v[v <= 0]
    if neg.size == 0:
        return 0.0
    return float(1.4826 * np.median(-neg))


def fill_small_holes(mask: np.ndarray, max_area: int | None = None) -> np.ndarray:
    """``mask`` with its enclosed holes of at most ``max_area`` pixels filled (any size if None).

    Reflections on shiny elytra are small holes and are filled; paper enclosed by legs, one's own
    or a neighbour's, is a larger hole and stays open.

    Examples
    --------
    >>> m = np.ones((9, 9), bool); m[2, 2] = False; m[4:8, 4:8] = False
    >>> f = fill_small_holes(m, 4)
    >>> bool(f[2, 2]), bool(f[5, 5])
    (True, False)
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D; given shape {m.shape}")
    holes = ndi.binary_fill_holes(m) & ~m
    if max_area is None:
        return m | holes
    labels, n = ndi.label(holes)
    if n == 0:
        return m
    sizes = np.bincount(labels.ravel())
    sizes[0] = max_area + 1
    return m | (sizes <= max_area)[labels]


def open_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean opening of a boolean mask by a disc of ``radius`` pixels [4]_.

    Parts narrower than about ``2 * radius`` (legs, antennae, fibres) vanish; wider parts keep
    their shape. ``radius <= 0`` returns the mask unchanged.

    Examples
    --------
    >>> m = np.zeros((9, 15), bool); m[1:8, 1:8] = True; m[4, 8:14] = True  # square + thin line
    >>> o = open_mask(m, 2)
    >>> bool(o[4, 4]), bool(o[4, 12])
    (True, False)
    """
    m = np.asarray(mask, dtype=bool)
    if radius <= 0 or not m.any():
        return m.copy()
    pad = int(np.ceil(radius)) + 1
    mp = np.pad(m, pad)
    core = ndi.distance_transform_edt(mp) > radius
    if not core.any():
        return np.zeros_like(m)
    opened = ndi.distance_transform_edt(~core) <= radius
    return (opened & mp)[pad:-pad, pad:-pad]


def _extent(mask: np.ndarray) -> int:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return 0
    return int(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))


def find_bodies(
    component: np.ndarray,
    *,
    min_length: float,
    min_radius: float,
    relative_radius: float = 0.2,
    stump_fraction: float = 0.15,
    colour: np.ndarray | None = None,
    colour_distance: float = 0.15,
) -> np.ndarray:
    """Label the bodies in one connected blob of foreground (a specimen, or several touching).

    A body is what survives an opening by a disc [4]_ whose radius is relative to the blob's own
    thickness: ``max(min_radius, relative_radius * R)`` with ``R`` the blob's largest inscribed
    radius. Legs and antennae are a small fraction of the body's width (a femur is 10-20 % of a
    beetle's width), so they vanish at any specimen size, while heads and pronota stay. Bodies
    shorter than ``min_length`` are dropped (debris, leg joints).

    A small specimen touching a much larger one and thinner than that radius is lost into the
    larger one's appendages: the price of never taking a severed thick leg for a specimen.
    :func:`colour_distinct_parts` gives it back when its colour sets it apart. Parts
    the opening cut apart at a narrow waist (a head, a pronotum) are re-united when they lie in line
    along the larger part's axis; small parts right next to a larger body but not in line with it
    are the thick bases of its legs and are no bodies.

    Parameters
    ----------
    component : (H, W) bool array
    min_length : float
        Minimum longer side of a body, in pixels.
    min_radius : float
        Smallest opening radius (pixels): about the half-width of the thickest leg of the smallest
        specimen.
    relative_radius : float
        Opening radius as a fraction of the blob's largest inscribed radius.
    stump_fraction : float
        A part closer than about twice the opening radius to a larger body, not in line with it,
        and smaller than this fraction of its area is the thick base of a leg, not a body.
    colour : (H, W, C) float array, optional
        The image under ``component``. Parts of one animal share its cuticle's colour; a part
        whose mean colour differs from the larger body's by more than ``colour_distance``
        (Euclidean, in the image's units) is another animal touching it (a pale springtail at a
        dark beetle's leg), never a leg stump or a head to re-unite.
    colour_distance : float
        See ``colour``.

    Returns
    -------
    (H, W) int32 label array of bodies (0 elsewhere, including legs and antennae).

    Examples
    --------
    A thick ellipse with four long legs is one body; the legs are not in it.

    >>> yy, xx = np.mgrid[:80, :120]
    >>> blob = (yy - 40) ** 2 / 18**2 + (xx - 60) ** 2 / 30**2 < 1
    >>> for x in (45, 75):
    ...     blob[2:78, x - 2 : x + 2] = True
    >>> bodies = find_bodies(blob, min_length=10, min_radius=2)
    >>> int(bodies.max()), bool(bodies[40, 60]), bool(bodies[5, 45])
    (1, True, False)
    """
    comp = np.asarray(component, dtype=bool)
    if comp.ndim != 2:
        raise ValueError(f"component must be 2-D; given shape {comp.shape}")
    if min_length <= 0 or min_radius < 0:
        raise ValueError(f"min_length must be > 0 and min_radius >= 0; given {min_length}, {min_radius}")
    out = np.zeros(comp.shape, dtype=np.int32)
    if not comp.any():
        return out
    big_r = float(ndi.distance_transform_edt(np.pad(comp, 1)).max())
    r1 = max(min_radius, relative_radius * big_r)
    core = open_mask(comp, r1)
    n = 0
    parts, k = ndi.label(core)
    for j in range(1, k + 1):
        part = parts == j
        if _extent(part) >= min_length:
            n += 1
            out[part] = n
    if n > 1:
        means = _mean_colours(out, n, colour) if colour is not None else None
        out = _tidy_bodies(out, comp, r1, stump_fraction, means, colour_distance)
    return out


def colour_distinct_parts(
    component: np.ndarray,
    bodies: np.ndarray,
    colour: np.ndarray,
    *,
    min_radius: float,
    min_length: float,
    colour_distance: float,
) -> np.ndarray:
    """Small animals touching a large one: parts of ``component`` outside its ``bodies`` that are
    thick and long enough to be a body and whose colour is unlike every body of the blob.

    :func:`find_bodies` opens a blob by a disc relative to its own thickness, so a springtail
    lying against a beetle is opened away with the beetle's legs. What the opening removed
    (``component`` outside ``bodies``) is opened again at the smallest specimen's scale
    (``min_radius``): legs and antennae thinner than that vanish, and each part left that is at
    least ``min_length`` long is a body of its own when its colour differs from that of every
    body of the blob by more than ``colour_distance`` (Euclidean, the image's units; each colour
    the mean of the darkest quarter of the pixels, so that a thin part's edges blended with the
    paper do not count). A limb has its body's cuticle; another animal has its own.

    Returns
    -------
    (H, W) int32 labels of the new bodies (1..m; 0 elsewhere).

    Examples
    --------
    A pale disc against a dark ellipse is a body of its own; the same disc in the ellipse's
    colour is not (a thick leg).

    >>> yy, xx = np.mgrid[:60, :100]
    >>> big = (yy - 30) ** 2 / 25**2 + (xx - 40) ** 2 / 35**2 < 1
    >>> small = (yy - 30) ** 2 + (xx - 82) ** 2 < 8**2
    >>> comp = big | small
    >>> bodies = (big & ((yy - 30) ** 2 / 22**2 + (xx - 40) ** 2 / 32**2 < 1)).astype(np.int32)
    >>> colour = np.where(small[..., None] & ~big[..., None], 0.8, 0.1) * np.ones(3)
    >>> kw = dict(min_radius=3, min_length=8, colour_distance=0.45)
    >>> int(colour_distinct_parts(comp, bodies, colour, **kw).max())
    1
    >>> int(colour_distinct_parts(comp, bodies, np.full(colour.shape, 0.1), **kw).max())
    0
    """
    comp = np.asarray(component, dtype=bool)
    body = np.asarray(bodies) > 0
    out = np.zeros(comp.shape, dtype=np.int32)
    if not body.any():
        return out
    rest = open_mask(comp & ~body, min_radius)
    parts, k = ndi.label(rest)
    if k == 0:
        return out
    labels = np.asarray(bodies)
    body_colours = [_core_colour(labels == t, colour) for t in range(1, int(labels.max()) + 1)]
    c = np.asarray(colour)
    m = 0
    for j, sl in enumerate(ndi.find_objects(parts), start=1):
        if sl is None:
            continue
        part = parts[sl] == j
        if _extent(part) < min_length:
            continue
        own = _core_colour(part, c[sl])
        if all(float(np.linalg.norm(own - other)) > colour_distance for other in body_colours):
            m += 1
            out[sl][part] = m
    return out


def _core_colour(region: np.ndarray, colour: np.ndarray, share: float = 0.25) -> np.ndarray:
    """Mean colour of the darkest ``share`` of ``region``'s pixels (by channel mean): a thin part's
    own cuticle, not its edges blended with the paper."""
    c = np.asarray(colour, dtype=np.float64)
    if c.ndim == 2:
        c = c[..., None]
    px = c[np.asarray(region, dtype=bool)]
    if px.size == 0:
        return np.zeros(c.shape[-1])
    lum = px.mean(axis=1)
    return px[lum <= np.quantile(lum, share)].mean(axis=0)


def _mean_colours(labels: np.ndarray, n: int, colour: np.ndarray) -> np.ndarray:
    """Per label 0..n, the mean of ``colour`` (H, W, C) over its pixels."""
    c = np.asarray(colour, dtype=np.float64)
    if c.ndim == 2:
        c = c[..., None]
    if c.shape[:2] != labels.shape:
        raise ValueError(f"colour shape {c.shape} does not match the labels' {labels.shape}")
    flat = labels.ravel()
    area = np.maximum(np.bincount(flat, minlength=n + 1), 1)
    return np.stack(
        [np.bincount(flat, weights=c[..., k].ravel(), minlength=n + 1) / area for k in range(c.shape[2])],
        axis=1,
    )


class _DisjointSets:
    """Union-find over the labels 0..n; each set is represented by its smallest member (so
    that groups keep the order of their first label).

    Examples
    --------
    >>> g = _DisjointSets(4)
    >>> g.union(3, 1); g.union(4, 3)
    >>> g.roots().tolist(), g.find(4) == g.find(1), g.find(2) == g.find(1)
    ([0, 1, 2, 1, 1], True, False)
    """

    def __init__(self, n: int) -> None:
        self._parent = list(range(n + 1))

    def find(self, i: int) -> int:
        parent = self._parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        """Each label's representative, as an int array indexed by label."""
        return np.asarray([self.find(i) for i in range(len(self._parent))], dtype=np.intp)


def _tidy_bodies(
    bodies: np.ndarray,
    comp: np.ndarray,
    radius: float,
    small_fraction: float,
    means: np.ndarray | None = None,
    colour_distance: float = 0.15,
) -> np.ndarray:
    """Re-unite body parts that the opening cut apart, and drop stumps of legs.

    Two parts of clearly different colours (``means``, per label) are two animals and are left
    alone. Otherwise, two parts joined in ``comp`` by a bridge no longer than about ``2 * radius``:

    * lying in line along the larger part's axis (:func:`_in_line`: a head or pronotum cut off at
      a narrow waist), they are one body, bridge included;
    * otherwise, a part smaller than ``small_fraction`` of the larger one's area is the thick base
      of a leg (a coxa, a bent femur) and is no body: it is left to the appendages.
    """
    n = int(bodies.max())
    grown = expand_labels(bodies, distance=radius + 2)
    grown[~comp] = 0
    dist = ndi.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
    contacts = _adjacent_saddles(grown, dist)
    if not contacts:
        return bodies
    mom = _moments(bodies, n)
    groups = _DisjointSets(n)
    stump = np.zeros(n + 1, dtype=bool)
    for (a, b), (_, y, x) in sorted(contacts.items(), key=lambda kv: -kv[1][0]):
        big, small = (a, b) if mom[a, 0] >= mom[b, 0] else (b, a)
        if groups.find(a) == groups.find(b):
            continue
        if means is not None and float(np.linalg.norm(means[a] - means[b])) > colour_distance:
            continue
        if _in_line(mom, big, small, (y, x), 1.2):
            groups.union(small, big)
        elif mom[small, 0] < small_fraction * mom[big, 0]:
            stump[small] = True
    roots = groups.roots()
    if len(np.unique(roots[1:])) == n and not stump.any():
        return bodies
    out = np.zeros_like(bodies)
    new_label = 0
    for r in np.unique(roots[1:]):
        members = np.flatnonzero(roots == r)
        if len(members) == 1 and stump[members[0]]:
            continue
        group = np.isin(bodies, members)
        if len(members) > 1:
            # the bridge: the grown parts' pixels that a closing of the group covers
            closed = ndi.binary_closing(group, iterations=max(1, round(radius + 2)), border_value=0)
            group |= closed & np.isin(grown, members)
        new_label += 1
        out[group] = new_label
    return out


def _adjacent_saddles(
    labels: np.ndarray, dist: np.ndarray
) -> dict[tuple[int, int], tuple[float, float, float]]:
    """For each pair of 4-adjacent labels: the largest distance value on their shared boundary,
    and where it is (row, column)."""
    keys, vals, ys, xs = [], [], [], []
    n1 = int(labels.max()) + 1
    for a, b, da, db, off in (
        (labels[:, :-1], labels[:, 1:], dist[:, :-1], dist[:, 1:], (0.0, 0.5)),
        (labels[:-1, :], labels[1:, :], dist[:-1, :], dist[1:, :], (0.5, 0.0)),
    ):
        sel = (a != b) & (a > 0) & (b > 0)
        if not sel.any():
            continue
        r, c = np.nonzero(sel)
        la, lb = a[sel].astype(np.int64), b[sel].astype(np.int64)
        keys.append(np.minimum(la, lb) * n1 + np.maximum(la, lb))
        vals.append(np.minimum(da[sel], db[sel]).astype(np.float64))
        ys.append(r + off[0])
        xs.append(c + off[1])
    if not keys:
        return {}
    key, val = np.concatenate(keys), np.concatenate(vals)
    y, x = np.concatenate(ys), np.concatenate(xs)
    order = np.lexsort((val, key))  # by pair, then by value: the last of each pair is its widest
    key, val, y, x = key[order], val[order], y[order], x[order]
    last = np.flatnonzero(np.append(key[1:] != key[:-1], True))
    return {
        (int(k // n1), int(k % n1)): (float(v), float(yy), float(xx))
        for k, v, yy, xx in zip(key[last], val[last], y[last], x[last], strict=True)
    }


def _raw_moments(labels: np.ndarray, n: int) -> np.ndarray:
    """Per label 0..n: sums of 1, row, col, row^2, row*col, col^2 (additive over unions)."""
    h, w = labels.shape
    flat = labels.ravel()
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    weights = (None, rows, cols, rows * rows, rows * cols, cols * cols)
    return np.stack([np.bincount(flat, weights=wt, minlength=n + 1) for wt in weights], axis=1)


def _central_moments(raw: np.ndarray) -> np.ndarray:
    """Area, centroid (row, col) and (rr, rc, cc) second central moments from raw sums."""
    area = raw[:, 0]
    safe = np.maximum(area, 1.0)
    cy, cx = raw[:, 1] / safe, raw[:, 2] / safe
    ryy = raw[:, 3] / safe - cy * cy
    ryx = raw[:, 4] / safe - cy * cx
    rxx = raw[:, 5] / safe - cx * cx
    return np.stack([area, cy, cx, ryy, ryx, rxx], axis=1)


def _moments(labels: np.ndarray, n: int) -> np.ndarray:
    """Per label 0..n: area, centroid (row, col) and the (rr, rc, cc) second central moments."""
    return _central_moments(_raw_moments(labels, n))


def _in_line(mom: np.ndarray, big: int, small: int, at: tuple[float, float], min_elongation: float) -> bool:
    """True when region ``small`` continues region ``big`` along its long axis, through ``at``.

    The segments of one insect (head, pronotum, elytra, abdomen) follow each other along the
    body's axis; a second specimen touches anywhere. ``big`` must be elongated (axis ratio at least
    ``min_elongation``) for its axis to mean anything; the contact point must lie beyond 60 % of
    its half-length and within half its half-width of the axis, and ``small``'s centre within its
    half-width of the axis, on the same side.
    """
    _, cy, cx, ryy, ryx, rxx = mom[big]
    ev, vec = np.linalg.eigh(np.array([[ryy, ryx], [ryx, rxx]]))
    if ev[0] <= 0 or np.sqrt(ev[1] / ev[0]) < min_elongation:
        return False
    u = vec[:, 1]  # major axis (row, col)
    half_len, half_wid = 2.0 * np.sqrt(ev[1]), 2.0 * np.sqrt(ev[0])

    def project(py: float, px: float) -> tuple[float, float]:
        d = np.array([py - cy, px - cx])
        along = float(d @ u)
        return along, abs(float(d[0] * u[1] - d[1] * u[0]))

    a_along, a_across = project(*at)
    s_along, s_across = project(mom[small, 1], mom[small, 2])
    return (
        abs(a_along) >= 0.6 * half_len
        and a_across <= 0.5 * half_wid
        and s_across <= 1.0 * half_wid
        and np.sign(s_along) == np.sign(a_along)
    )


def split_touching(
    mask: np.ndarray,
    *,
    min_distance: int,
    neck_ratio: float = 0.6,
    thin_ratio: float = 0.0,
    min_solidity: float = 0.95,
    min_region_area: int = 0,
    axial_elongation: float = 1.2,
) -> np.ndarray:
    """Split one blob of touching bodies into labelled parts (distance transform + watershed).

    Steps [5]_ [6]_: blobs that are already convex (solidity >= ``min_solidity``) are one body and
    are not split; otherwise the markers are the local maxima of the Euclidean distance transform at
    least ``min_distance`` apart, and a watershed of the negated distance inside the blob gives one
    region per marker. A single beetle gives several regions (head, pronotum, elytra), so the
    regions are then merged back, most certain first, one pair at a time [7]_, when

    * one of them is smaller than ``min_region_area`` pixels (a crumb);
    * the smaller one continues the larger one along its long axis (the larger has an axis ratio
      of at least ``axial_elongation``; the contact point lies beyond 60 % of its half-length and
      near its axis, and so does the smaller one's centre): the segments of one insect follow each
      other head to tail, however narrow the waist between them, while a second specimen touches
      anywhere;
    * their shared boundary is wide: its largest distance value (a half-width) exceeds
      ``neck_ratio`` times the smaller of the two regions' own half-widths (a wide neck joins
      parts of one specimen, a narrow contact separates two);
    * one of them is much thinner: its half-width is below ``thin_ratio`` times the other's
      (0 disables this rule, which would also swallow a small specimen touching a large one).

    Parameters
    ----------
    mask : (H, W) bool array, usually one connected body blob.
    min_distance : int
        Minimum distance between markers; about the half-width of the smallest specimen.
    neck_ratio : float
        Shared-boundary half-width over the smaller region's half-width above which they merge.
    thin_ratio : float
        Half-width ratio of two adjacent regions below which the thinner joins the thicker.
    min_solidity : float
        Blobs at least this convex are never split.
    min_region_area : int
        Regions smaller than this (pixels) are never left on their own.
    axial_elongation : float
        Smallest axis ratio of a region for the in-line rule to apply (0 disables the rule).

    Returns
    -------
    (H, W) int32 label array (0 background, 1..n regions).

    Examples
    --------
    Two discs overlapping a little are two bodies; one ellipse is one.

    >>> yy, xx = np.mgrid[:30, :50]
    >>> two = ((yy - 15) ** 2 + (xx - 15) ** 2 < 100) | ((yy - 15) ** 2 + (xx - 33) ** 2 < 100)
    >>> int(split_touching(two, min_distance=5).max())
    2
    >>> one = (yy - 15) ** 2 / 10**2 + (xx - 25) ** 2 / 22**2 < 1
    >>> int(split_touching(one, min_distance=5).max())
    1
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D; given shape {m.shape}")
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1; given {min_distance}")
    single, n = ndi.label(m)
    if n == 0:
        return single.astype(np.int32)
    if n == 1:
        area = int(m.sum())
        hull = int(convex_hull_image(m).sum())
        if hull == 0 or area / hull >= min_solidity:
            return single.astype(np.int32)
    dist = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    peaks = peak_local_max(dist, min_distance=min_distance, labels=single, exclude_border=False)
    if len(peaks) < 2:
        return single.astype(np.int32)
    markers = np.zeros(m.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    labels = watershed(-dist, markers, mask=m).astype(np.int32)
    return _merge_regions(labels, dist, neck_ratio, thin_ratio, min_region_area, axial_elongation)


def _merge_regions(
    labels: np.ndarray,
    dist: np.ndarray,
    neck_ratio: float,
    thin_ratio: float,
    min_region_area: int,
    axial_elongation: float,
) -> np.ndarray:
    """Union adjacent watershed regions by the rules of :func:`split_touching`, until none applies."""
    n = int(labels.max())
    groups = _DisjointSets(n)
    # Everything a decision needs is measured once on the watershed regions; a union's moments are
    # sums of its members', its peak their maximum, its saddle with a neighbour the widest of its
    # members' saddles.
    raw0 = _raw_moments(labels, n)
    peak0 = np.zeros(n + 1)
    np.maximum.at(peak0, labels.ravel(), dist.ravel())
    saddles0 = _adjacent_saddles(labels, dist)
    while True:
        roots = groups.roots()
        raw = np.zeros_like(raw0)
        np.add.at(raw, roots, raw0)
        peak = np.zeros(n + 1)
        np.maximum.at(peak, roots, peak0)
        mom = _central_moments(raw)
        area = mom[:, 0]
        saddles: dict[tuple[int, int], tuple[float, float, float]] = {}
        for (a0, b0), val in saddles0.items():
            a, b = sorted((int(roots[a0]), int(roots[b0])))
            if a != b and val[0] > saddles.get((a, b), (-1.0, 0.0, 0.0))[0]:
                saddles[(a, b)] = val
        if not saddles:
            break
        # The most certain merge first, one at a time, so that every decision sees the regions as
        # they are after the previous one.
        best: tuple[float, int, int] | None = None
        for (a, b), (sad, sy, sx) in saddles.items():
            thin, thick = sorted((peak[a], peak[b]))
            neck = sad / max(thin, 1e-9)
            big, small = (a, b) if area[a] >= area[b] else (b, a)
            tiny = area[small] < min_region_area
            axial = axial_elongation > 0 and _in_line(mom, big, small, (sy, sx), axial_elongation)
            merge = neck > neck_ratio or thin < thin_ratio * thick or tiny or axial
            # Crumbs first, then segments of one body in line, then wide necks.
            key = neck + (2.0 if axial else 0.0) + (4.0 if tiny else 0.0)
            if merge and (best is None or key > best[0]):
                best = (key, a, b)
        if best is None:
            break
        _, a, b = best
        groups.union(a, b)
    roots = groups.roots()
    remap = np.zeros(n + 1, dtype=np.int32)
    for new, r in enumerate(np.unique(roots[1:]), start=1):
        remap[roots == r] = new
    remap[0] = 0
    return remap[labels]


def assign_to_bodies(component: np.ndarray, bodies: np.ndarray) -> np.ndarray:
    """Give every pixel of ``component`` the label of the body it is connected to most closely.

    Legs and antennae (in ``component`` but not in any body) join the body they grow from, by a
    flood from the bodies through the component (a watershed on a flat image [5]_). Pixels of
    parts not connected to any body stay 0.

    Examples
    --------
    >>> comp = np.zeros((3, 8), bool); comp[1, :] = True
    >>> bodies = np.zeros((3, 8), np.int32); bodies[1, 0] = 1; bodies[1, 7] = 2
    >>> assign_to_bodies(comp, bodies)[1].tolist()
    [1, 1, 1, 1, 2, 2, 2, 2]
    """
    c = np.asarray(component, dtype=bool)
    b = np.asarray(bodies)
    if c.shape != b.shape:
        raise ValueError(f"component shape {c.shape} does not match bodies shape {b.shape}")
    if b.max(initial=0) == 0:
        return np.zeros(c.shape, dtype=np.int32)
    markers = np.where(c, b, 0).astype(np.int32)
    flat = np.zeros(c.shape, dtype=np.float32)
    return watershed(flat, markers, mask=c).astype(np.int32)
