"""Training data for learned detectors: COCO sets of synthetic plates, and tiles cut from plates.

- :func:`write_synthetic_set` renders held-apart sets of synthetic plates (real cut-outs plus
  procedural beetles, touching pairs and debris; :mod:`labpipe.synth`) with one COCO file.
- :func:`read_coco_set` reads any COCO detection file (images, boxes, optional ``um_per_px``).
- :func:`load_work_image` reads an image at the model's working scale (micrometres per pixel).
- :func:`random_tile` cuts a training tile with its boxes clipped to it (boxes mostly outside are
  dropped), after a random rescale and flip.

References
----------
.. [1] T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014 (the annotation format:
   ``bbox`` = ``[x, y, w, h]`` in pixels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from labpipe.detect.tiling import clip_boxes_to_tile

__all__ = [
    "CocoImage",
    "TrainingTile",
    "blank_regions",
    "coco_document",
    "load_work_image",
    "padding_colour",
    "random_tile",
    "read_coco_set",
    "write_coco_document",
    "write_synthetic_set",
]

SPECIMEN_CATEGORY = {"id": 1, "name": "specimen", "supercategory": "arthropod"}


@dataclass
class CocoImage:
    """One image of a COCO set: its file, size, scale (when known), specimen boxes and ignore regions."""

    file_name: str
    width: int
    height: int
    um_per_px: float | None
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    ignore: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Regions neither specimen nor background (``iscrowd`` or ``attributes.uncertain``): training
    blanks them (:func:`blank_regions`) so the detector is taught neither way."""


def read_coco_set(path: Path, category: str | None = "specimen") -> list[CocoImage]:
    """Every image of a COCO detection file with its boxes (images without boxes included).

    ``category`` keeps the annotations of the category with that name (a lab's export also holds
    ``debris`` boxes, negatives that must not become specimens); ``None`` (or a file without such a
    category) keeps all: every object is a specimen to a one-class detector. Annotations marked
    ``iscrowd`` or ``attributes.uncertain`` go to :attr:`CocoImage.ignore`, whatever their category.
    """
    doc = json.loads(Path(path).read_text())
    wanted: set[int] | None = None
    if category is not None:
        wanted = {c["id"] for c in doc.get("categories", []) if c.get("name") == category} or None
    images: dict[int, CocoImage] = {}
    for img in doc.get("images", []):
        scale = img.get("um_per_px")
        images[img["id"]] = CocoImage(
            str(img["file_name"]), int(img["width"]), int(img["height"]), float(scale) if scale else None
        )
    for ann in doc.get("annotations", []):
        image = images.get(ann["image_id"])
        if image is None:
            raise ValueError(f"{path}: annotation {ann.get('id')} points at unknown image {ann['image_id']}")
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            continue
        if ann.get("iscrowd") or (ann.get("attributes") or {}).get("uncertain"):
            image.ignore.append((x, y, w, h))
        elif wanted is None or ann.get("category_id") in wanted:
            image.boxes.append((x, y, w, h))
    return list(images.values())


def coco_document(images: list[CocoImage], description: str = "labpipe detection set") -> dict:
    """A COCO detection document (one category, ``specimen``) for ``images``."""
    doc_images, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        entry = {"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height}
        if image.um_per_px:
            entry["um_per_px"] = image.um_per_px
        doc_images.append(entry)
        for box, crowd in [(b, 1) for b in image.ignore] + [(b, 0) for b in image.boxes]:
            x, y, w, h = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": SPECIMEN_CATEGORY["id"],
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": crowd,  # 1: an ignore region (neither hit nor miss)
                }
            )
    return {
        "info": {"description": description, "version": "1.0"},
        "images": doc_images,
        "categories": [SPECIMEN_CATEGORY],
        "annotations": annotations,
    }


def write_coco_document(doc: dict, path: Path) -> None:
    """Write a COCO document atomically (temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _random_spec(rng: np.random.Generator, seed: int, cutouts: Path | None, full_size: bool):
    from labpipe.synth.plate import PlateSpec

    um = 5.0 if full_size else float(rng.uniform(10.0, 16.0))
    side = round(30000.0 / um / 16.0) * 16  # a 30 mm field of view
    small = rng.random() < 0.25
    return PlateSpec(
        width=side,
        height=side,
        n_specimens=int(rng.integers(15, 41) if full_size else rng.integers(2, 45)),
        n_touching_pairs=int(rng.integers(1, 5) if full_size else rng.integers(0, 6)),
        n_debris=int(rng.integers(10, 60)),
        um_per_px=um,
        specimen_length_um=(800.0, 3500.0) if small else (1500.0, 6000.0),
        seams=bool(rng.random() < 0.7),
        real_cutouts=cutouts,
        real_fraction=float(rng.uniform(0.3, 0.8)) if cutouts is not None else 0.0,
        seed=seed,
    )


def write_synthetic_set(
    out_dir: Path,
    n_plates: int,
    seed: int,
    cutouts: Path | None = None,
    *,
    full_size: bool = False,
    progress: bool = True,
) -> Path:
    """Render ``n_plates`` synthetic plates into ``out_dir`` with one COCO file; returns its path.

    Plates are a 30 mm field of view: at 10-16 um/px (1875-3000 px, training and validation sets)
    or, with ``full_size``, at 5 um/px (6000 px, like a real stitched plate; test sets). Counts,
    sizes, touching pairs, debris, seams and the share of real cut-outs vary per plate, drawn from
    ``seed``; plate ``i`` has seed ``seed + i``, so sets with seeds far apart never share a plate.
    Hold the cut-outs apart too (separate ``cutouts`` folders) for an honest test set.

    Files: ``out_dir/plate-<seed>.tif`` and ``out_dir/annotations.coco.json``.
    """
    from tqdm import tqdm

    from labpipe.synth.plate import write_plate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images: list[CocoImage] = []
    for i in tqdm(range(n_plates), desc=f"plates {out_dir.name}", disable=not progress, unit="plate"):
        spec = _random_spec(rng, seed + i, cutouts, full_size)
        name = f"plate-{seed + i}.tif"
        for _attempt in range(5):
            try:
                truth = write_plate(spec, out_dir / name)
                break
            except ValueError:  # too crowded for this dish: fewer objects
                spec.n_specimens = max(1, spec.n_specimens * 2 // 3)
                spec.n_debris //= 2
        else:
            raise RuntimeError(f"could not lay out plate {name}")
        images.append(
            CocoImage(
                name,
                truth.width,
                truth.height,
                spec.um_per_px,
                [tuple(float(v) for v in o.bbox) for o in truth.specimens],  # type: ignore[misc]
            )
        )
        write_coco_document(
            coco_document(images, "labpipe synthetic plates"), out_dir / "annotations.coco.json"
        )
    path = out_dir / "annotations.coco.json"
    write_coco_document(coco_document(images, "labpipe synthetic plates"), path)
    return path


def load_work_image(path: Path, factor: float) -> np.ndarray:
    """The image at ``path`` reduced by ``factor`` (full-resolution pixels per work pixel, >= 1).

    Read through :func:`labpipe.imaging.open_image` (lazy, area-averaged overview), so training sees
    the same pixels as inference. A factor below 1 enlarges with bilinear interpolation.
    """
    from labpipe.imaging import open_image

    with open_image(path) as plate:
        if factor >= 1.0:
            side = max(1, round(max(plate.width, plate.height) / factor))
            image, _ = plate.overview(side)
            return image
        rgb = plate.read_region(0, 0, plate.width, plate.height)
    w = max(1, round(rgb.shape[1] / factor))
    h = max(1, round(rgb.shape[0] / factor))
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def padding_colour(image: np.ndarray) -> tuple[int, int, int]:
    """The colour an image smaller than a tile is padded with, in training and at inference: the
    mean of its first and last rows and columns (truncated to integers).

    >>> padding_colour(np.full((4, 6, 3), 90, np.uint8))
    (90, 90, 90)
    """
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return tuple(int(v) for v in border.mean(axis=0))  # type: ignore[return-value]


def blank_regions(image: np.ndarray, boxes: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of ``image`` with the ``[x, y, w, h]`` ``boxes`` filled with ``colour`` (ignore
    regions: a speck nobody could call is shown to the detector as neither insect nor background).

    >>> img = np.zeros((4, 5, 3), np.uint8)
    >>> out = blank_regions(img, np.array([[1.2, 0.0, 2.0, 2.4]]), (9, 9, 9))
    >>> out[:, :, 0].tolist()
    [[0, 9, 9, 9, 0], [0, 9, 9, 9, 0], [0, 9, 9, 9, 0], [0, 0, 0, 0, 0]]
    >>> int(img.sum())
    0
    """
    out = image.copy()
    h, w = image.shape[:2]
    for x, y, bw, bh in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(w, int(np.ceil(x + bw))), min(h, int(np.ceil(y + bh)))
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = np.asarray(colour, dtype=np.uint8)
    return out


@dataclass
class TrainingTile:
    """A square training input and its boxes ``[x, y, w, h]`` in its own pixels."""

    image: np.ndarray
    boxes: np.ndarray


def random_tile(
    image: np.ndarray,
    boxes: np.ndarray,
    tile: int,
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.75, 1.33),
    min_visible: float = 0.6,
    fill: tuple[int, int, int] | None = None,
) -> TrainingTile:
    """A random ``tile`` x ``tile`` crop of ``image`` (work scale) after a random rescale and flips.

    Boxes are clipped to the crop (those with less than ``min_visible`` of their area inside are
    dropped). An image smaller than the tile is padded at the bottom and right with ``fill``
    (default: the mean colour of its border).
    """
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    h0, w0 = image.shape[:2]
    if abs(s - 1.0) > 1e-3:
        w1, h1 = max(1, round(w0 * s)), max(1, round(h0 * s))
        image = np.asarray(Image.fromarray(image).resize((w1, h1), Image.BILINEAR))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array(
            [w1 / w0, h1 / h0, w1 / w0, h1 / h0]
        )
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = image.shape[:2]
    x = int(rng.integers(0, max(0, w - tile) + 1))
    y = int(rng.integers(0, max(0, h - tile) + 1))
    crop = image[y : y + tile, x : x + tile]
    clipped, _ = clip_boxes_to_tile(boxes, (x, y, min(tile, w), min(tile, h)), min_visible)
    if crop.shape[0] < tile or crop.shape[1] < tile:
        if fill is None:
            fill = padding_colour(image)
        padded = np.empty((tile, tile, 3), dtype=np.uint8)
        padded[:] = np.asarray(fill, dtype=np.uint8)
        padded[: crop.shape[0], : crop.shape[1]] = crop
        crop = padded
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
        clipped[:, 0] = tile - clipped[:, 0] - clipped[:, 2]
    if rng.random() < 0.5:
        crop = crop[::-1]
        clipped[:, 1] = tile - clipped[:, 1] - clipped[:, 3]
    return TrainingTile(np.ascontiguousarray(crop), clipped)
