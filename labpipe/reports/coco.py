"""Training data out: the reviewed plates as a COCO detection file (``labpipe export coco``,
``GET /api/exports/coco.json``, the web UI's download).

What goes in (one rule, :func:`coco_export`):

- **plates**: those marked *boxes reviewed* (every specimen checked, none missing); without
  ``reviewed_only`` also plates on which every box carries a person's verdict (see
  :func:`labpipe.queries.training.training_images`). A plate without a known size is left out.
- **images**: ``file_name`` is where the plate lies (the archived path, else the path it was read
  from) relative to ``root``, the folder to pass as ``--images`` (a file outside ``root`` keeps its
  absolute path, which joins to any folder unchanged); ``width``/``height`` are full-resolution pixels
  of the displayed frame; extra fields ``um_per_px`` (the scale, when known), ``labpipe_image_id``,
  ``sample``, ``boxes_reviewed_by`` and ``boxes_reviewed_at``.
- **annotations**: every specimen box of the plate, ``bbox`` ``[x, y, w, h]`` in those pixels,
  ``iscrowd`` 0. Category ``specimen`` (id 1) with ``attributes.family`` when a family counts (a
  person's or an accepted classification), ``attributes.verified`` when a person gave a verdict.
  A box a person judged **not a specimen** is category ``debris`` (id 2): a negative the detector
  should not fire on (the evaluation reader, :func:`labpipe.evaluation.truth.read_coco_truth`, keeps
  it as debris; ``labpipe train detector`` trains on ``specimen`` only). A box judged **multiple**
  (several animals in one box) stays a ``specimen`` box with ``attributes.multiple`` true: it does
  mark animals, and the readers count it as one. A box the latest detection run did not find again
  (``not_redetected``) is kept only when a person verified or drew it.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from labpipe.db.models import DetectionState, Image, VerificationStatus
from labpipe.queries.listings import image_specimens
from labpipe.queries.training import box_origins, training_images

__all__ = ["CATEGORIES", "DEBRIS_ID", "SPECIMEN_ID", "coco_export", "coco_file_name"]

SPECIMEN_ID = 1
DEBRIS_ID = 2
CATEGORIES = [
    {"id": SPECIMEN_ID, "name": "specimen", "supercategory": "arthropod"},
    {"id": DEBRIS_ID, "name": "debris", "supercategory": "negative"},
]


def coco_file_name(image: Image, root: Path) -> str:
    """The plate's file relative to ``root`` (POSIX), or its absolute path when outside ``root``
    (a path stored relative, as ``labpipe process demo/plate.tif`` stores it, is taken from the
    current folder).

    >>> img = Image(source_path="/lab/inbox/p1.tif", archived_path="/lab/archive/S1/p1.tif")
    >>> coco_file_name(img, Path("/lab/archive")), coco_file_name(img, Path("/elsewhere"))
    ('S1/p1.tif', '/lab/archive/S1/p1.tif')
    """
    where = Path(os.path.abspath(image.archived_path or image.source_path))
    try:
        return where.relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return where.as_posix()


def _when(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def coco_export(
    session: Session,
    root: Path,
    *,
    sample: str | None = None,
    reviewed_only: bool = False,
    created: dt.datetime | None = None,
) -> dict[str, Any]:
    """The COCO detection document of the reviewed plates (see the module's rules).

    ``created`` fills ``info.date_created`` (left out when ``None``, so two exports of the same
    data are the same bytes).
    """
    root = Path(root)
    images = training_images(session, sample=sample, reviewed_only=reviewed_only)
    origins = box_origins(session, [i.id for i in images])
    doc_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    negatives = 0
    for image in images:
        entry: dict[str, Any] = {
            "id": image.id,
            "file_name": coco_file_name(image, root),
            "width": image.width,
            "height": image.height,
            "labpipe_image_id": image.id,
            "sample": image.sample_id,
            "boxes_reviewed_by": image.boxes_reviewed_by,
            "boxes_reviewed_at": _when(image.boxes_reviewed_at),
        }
        if image.um_per_px:
            entry["um_per_px"] = image.um_per_px
        doc_images.append(entry)
        for row in image_specimens(session, image.id):
            origin = origins.get(row.specimen_id)
            verdict = row.call.verification
            if (
                origin is not None
                and origin.detection_state == DetectionState.NOT_REDETECTED.value
                and verdict is None
                and not origin.edited
            ):
                continue  # the latest run lost it and no person vouched for it
            x, y, w, h = (int(v) for v in row.bbox)
            attributes: dict[str, Any] = {"labpipe_specimen_id": row.specimen_id}
            if origin is not None:
                attributes["detection_state"] = origin.detection_state
            if verdict is not None:
                attributes["verified"] = True
                attributes["verdict"] = verdict
            if verdict == VerificationStatus.NOT_SPECIMEN.value:
                category = DEBRIS_ID
                negatives += 1
            else:
                category = SPECIMEN_ID
                if row.resolution.outcome.value == "accepted" and row.resolution.family:
                    attributes["family"] = row.resolution.family
                if verdict == VerificationStatus.MULTIPLE.value:
                    attributes["multiple"] = True
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image.id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "attributes": attributes,
                }
            )
    info: dict[str, Any] = {
        "description": "labpipe reviewed plates",
        "version": "1.0",
        "images_root": str(root),
        "sample": sample,
        "reviewed_only": reviewed_only,
        "boxes": len(annotations) - negatives,
        "negatives": negatives,
    }
    if created is not None:
        info["date_created"] = created.isoformat()
    return {"info": info, "images": doc_images, "categories": CATEGORIES, "annotations": annotations}
