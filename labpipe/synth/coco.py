"""COCO detection JSON for synthetic plates: write the truth, read boxes back for evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

from labpipe.synth.plate import PlateTruth

__all__ = ["load_coco", "write_coco"]

SPECIMEN_CATEGORY = {"id": 1, "name": "specimen", "supercategory": "arthropod"}


def write_coco(truth: PlateTruth, image_file_name: str, path: Path) -> None:
    """Write one image's specimens as COCO detection JSON.

    Debris is not annotated (a detector should not find it). Each annotation carries
    ``bbox`` ``[x, y, w, h]`` in full-resolution pixels, ``area`` (``w * h``), ``iscrowd`` 0 and
    ``attributes`` ``{"touching": bool, "source": str, "taxon": str}`` (``source``: the photo's
    file name or ``"procedural"``; ``taxon``: ``"procedural-beetle"``, ``"carabid"``,
    ``"springtail"``, ...). The image entry carries the scale in
    ``um_per_px``. Written atomically (a temporary file renamed into place).
    """
    path = Path(path)
    annotations = []
    for obj in truth.specimens:
        x, y, w, h = (int(v) for v in obj.bbox)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": SPECIMEN_CATEGORY["id"],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
                "attributes": {
                    "touching": bool(obj.touching),
                    "source": str(obj.source),
                    "taxon": str(obj.taxon),
                },
            }
        )
    doc = {
        "info": {"description": "labpipe synthetic plate", "version": "1.0"},
        "images": [
            {
                "id": 1,
                "file_name": image_file_name,
                "width": int(truth.width),
                "height": int(truth.height),
                "um_per_px": float(truth.spec.um_per_px),
            }
        ],
        "categories": [SPECIMEN_CATEGORY],
        "annotations": annotations,
    }
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def load_coco(
    path: Path, category: str | None = "specimen"
) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes per image file name from a COCO detection JSON file.

    Parameters
    ----------
    path:
        The JSON file (any COCO detection file, not only labpipe's).
    category:
        Keep annotations of the category with this name; None keeps all.

    Returns
    -------
    dict
        ``file_name -> [(x, y, w, h), ...]`` in the file's order; images without annotations map
        to an empty list.
    """
    doc = json.loads(Path(path).read_text())
    wanted: set[int] | None = None
    if category is not None:
        wanted = {c["id"] for c in doc.get("categories", []) if c.get("name") == category}
        if not wanted:
            raise ValueError(f"{path}: no category named {category!r}")
    names = {img["id"]: img["file_name"] for img in doc.get("images", [])}
    boxes: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names.values()}
    for ann in doc.get("annotations", []):
        if wanted is not None and ann.get("category_id") not in wanted:
            continue
        name = names.get(ann["image_id"])
        if name is None:
            raise ValueError(f"{path}: annotation {ann.get('id')} points at unknown image {ann['image_id']}")
        x, y, w, h = (float(v) for v in ann["bbox"])
        boxes[name].append((x, y, w, h))
    return boxes
