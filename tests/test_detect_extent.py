"""A box to the tips of the legs: faint thin legs found along their own line (issue 11).

Tiny synthetic strength maps: a body, a leg one pixel wide that is barely above the paper's
noise pixel by pixel, and the things that must not join (the paper's noise, a neighbour's edge,
a line running on far beyond a leg's length).
"""

from __future__ import annotations

import numpy as np

from labpipe.detect.extent import appendage_mask, grow_thin_appendages, line_strength, refine_box

SIGMA = 0.03


def _paper(shape: tuple[int, int] = (120, 160), seed: int = 0) -> np.ndarray:
    """Foreground strength of plain paper: the positive half of Gaussian noise."""
    return np.clip(np.random.default_rng(seed).normal(0.0, SIGMA, shape), 0, None).astype(np.float32)


def _animal(strength: np.ndarray, leg_strength: float, leg_length: int) -> np.ndarray:
    """A dark 12 x 12 body at rows 54-65, columns 40-51, with a leg one pixel wide running right
    from it along row 60; returns the body mask."""
    strength[54:66, 40:52] = 0.6
    strength[60, 52 : 52 + leg_length] += leg_strength
    body = np.zeros(strength.shape, dtype=bool)
    body[54:66, 40:52] = True
    return body


def _grow(strength: np.ndarray, body: np.ndarray, cell: np.ndarray | None = None) -> np.ndarray:
    cell = np.ones(strength.shape, dtype=bool) if cell is None else cell
    found = appendage_mask(strength, body, cell, max(3 * SIGMA, 0.25 * 0.6))
    return grow_thin_appendages(
        strength, found, cell, ~found, SIGMA, length=15, k_noise=6.0, floor=0.08 * 0.6, max_growth=3.0
    )


def test_a_faint_leg_pixel_by_pixel_is_found_along_its_line() -> None:
    strength = _paper()
    body = _animal(strength, leg_strength=0.08, leg_length=30)
    by_pixel = refine_box(appendage_mask(strength, body, np.ones_like(body), 0.15), (0, 0))
    assert by_pixel == (40.0, 54.0, 12.0, 12.0)  # the leg is below the pixel threshold
    x, y, w, h = refine_box(_grow(strength, body), (0, 0))
    assert (x, y, h) == (40.0, 54.0, 12.0)
    assert 40 + w >= 52 + 30 - 15 // 2  # to the tip of the leg, less the filter's half-length
    assert 40 + w <= 52 + 30 + 8  # and not on along the paper


def test_plain_paper_does_not_grow_a_body() -> None:
    strength = _paper(seed=1)
    body = _animal(strength, leg_strength=0.0, leg_length=0)
    x, y, w, h = refine_box(_grow(strength, body), (0, 0))
    assert x >= 38 and y >= 52 and x + w <= 54 and y + h <= 68


def test_a_neighbours_edge_does_not_lead_the_growth() -> None:
    """A long line along the edge of another candidate's region (outside this one's cell) is that
    neighbour's soft edge, not a leg."""
    strength = _paper(seed=2)
    body = _animal(strength, leg_strength=0.0, leg_length=0)
    strength[66, 30:150] += 0.1  # a line touching the body's lower edge, along the neighbour
    cell = np.ones(strength.shape, dtype=bool)
    cell[67:, :] = False  # the neighbour's region, below
    x, y, w, h = refine_box(_grow(strength, body, cell), (0, 0))
    assert x >= 38 and x + w <= 54 and y + h <= 68


def test_a_line_far_longer_than_a_leg_is_cut_at_the_growth_limit() -> None:
    strength = _paper(shape=(120, 300), seed=3)
    body = _animal(strength, leg_strength=0.1, leg_length=240)  # a fibre running across the sheet
    cell = np.ones(strength.shape, dtype=bool)
    found = appendage_mask(strength, body, cell, 0.15)
    grown = grow_thin_appendages(
        strength, found, cell, ~found, SIGMA, length=15, k_noise=6.0, floor=0.05, max_growth=0.75
    )
    x, _, w, _ = refine_box(grown, (0, 0))
    assert x + w <= 52 + 0.75 * 12 + 1


def test_line_strength_sees_a_leg_that_noise_hides() -> None:
    strength = _paper(seed=4)
    strength[60, 20:80] += 0.05  # under 2 sigma per pixel
    line = line_strength(strength, length=25)
    on_leg = float(np.median(line[60, 30:70]))
    off_leg = np.quantile(line[:40], 0.999)
    assert on_leg > off_leg
