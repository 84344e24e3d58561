"""Overlay pictures of a detector's boxes over the truth, for people to look at.

One PNG per image (:func:`draw_overlay`, :func:`write_overlays`): the image reduced to at most
``max_side`` pixels, with

* truth: specimens found (green), specimens missed (orange, thick), debris (magenta), ignore
  regions (yellow, thin);
* detections: true positives (blue), false positives (red, thick), on ignore regions (grey).

A legend with the image's counts sits in the top-left corner.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from labpipe.evaluation.detector import ImageResult

__all__ = ["COLOURS", "draw_overlay", "overlay_file_name", "write_overlays"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "found": (0, 190, 0),
    "missed": (255, 140, 0),
    "debris_truth": (220, 0, 220),
    "ignore": (235, 205, 0),
    "tp": (0, 90, 255),
    "fp": (235, 0, 0),
    "debris": (235, 0, 0),
    "ignored": (140, 140, 140),
}


def overlay_file_name(file_name: str) -> str:
    """A safe PNG name for an image's overlay.

    >>> overlay_file_name("DSC 0390.JPG")
    'DSC_0390.overlay.png'
    """
    stem = Path(file_name).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) + ".overlay.png"


def draw_overlay(image: np.ndarray, factor: float, result: ImageResult) -> Image.Image:
    """Draw ``result`` (full-resolution boxes) on ``image``, an overview ``factor`` times smaller."""
    canvas = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    side = max(canvas.size)
    thin = max(1, round(side / 1200))
    thick = thin * 2 + 1

    def rect(box: Iterable[float], colour: tuple[int, int, int], width: int, grow: int = 0) -> None:
        x, y, w, h = (float(v) / factor for v in box)
        draw.rectangle([x - grow, y - grow, x + w + grow, y + h + grow], outline=colour, width=width)

    truth = result.truth
    if truth is not None:
        for box in truth.ignore:
            rect(box, COLOURS["ignore"], thin)
        for box in truth.debris:
            rect(box, COLOURS["debris_truth"], thin)
        for i, box in enumerate(truth.specimens):
            hit = result.found[i] if i < len(result.found) else False
            rect(box, COLOURS["found"] if hit else COLOURS["missed"], thin if hit else thick)
    if result.expected_count is not None:
        # counted images: boxes up to the expected count are blue, those beyond it red
        statuses = ["tp" if k < result.expected_count else "fp" for k in range(len(result.boxes))]
    else:
        statuses = result.status
    for box, status in zip(result.boxes, statuses, strict=True):
        width = thick if status in ("fp", "debris") else thin
        rect(box, COLOURS[status], width, grow=thick)
    legend = (
        f"{result.file_name}: truth {result.n_truth}, detections {result.n_detections}, "
        f"hits {result.true_positives}, false {result.false_positives} "
        f"(debris {result.debris_false_positives}), ignored {result.ignored}"
    )
    if result.expected_count is not None:
        legend = f"{result.file_name}: expected {result.expected_count}, detections {result.n_detections}"
    lines = [
        legend,
        "truth: green found, orange missed, magenta debris, yellow ignore",
        "detections: blue hit, red false, grey on ignore",
    ]
    pad = 4
    height = 12 * len(lines) + 2 * pad
    width = max(draw.textlength(t) for t in lines) + 2 * pad
    draw.rectangle([0, 0, width, height], fill=(255, 255, 255))
    for k, text in enumerate(lines):
        draw.text((pad, pad + 12 * k), text, fill=(0, 0, 0))
    return canvas


def write_overlays(results: Iterable[ImageResult], out_dir: Path, max_side: int = 1600) -> list[Path]:
    """Write one overlay PNG per image into ``out_dir``; returns the paths written."""
    from labpipe.imaging import open_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for result in results:
        if result.truth is None:
            continue
        with open_image(result.truth.path) as plate:
            image, factor = plate.overview(max_side)
        target = out_dir / overlay_file_name(result.file_name)
        draw_overlay(image, factor, result).save(target)
        written.append(target)
    return written
