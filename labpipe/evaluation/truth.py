"""Ground truth for detector evaluation: boxes (with ignore regions and debris), or known counts.

Three kinds of truth, read into one :class:`TruthImage` per image:

* :func:`read_coco_truth` -- a COCO detection file. Annotations of a category named ``debris``
  are debris (a detection there is a false positive, reported apart); an annotation with
  ``iscrowd`` or ``attributes.uncertain`` is an *ignore region* whatever its category (a
  detection there is neither a hit nor a false positive, and a miss there is not counted); every
  other annotation is a specimen. ``attributes`` of specimens (``taxon``, ``touching``) are kept
  for per-taxon recall and the touching-pair split rate.
* :func:`read_inselect_truth` -- an Inselect document (``items[].rect``: left, top, width, height
  as fractions of the image) beside its scan.
* :func:`counted_folder` -- a folder of images that each hold a known number of specimens (the
  BIOSCAN wells: 1 or 0), with no boxes.

Orientation: labpipe reports boxes in the displayed frame of a photo (EXIF orientation applied,
DESIGN.md). A truth file records the size of the frame it was drawn in; where that is the stored
frame of a rotated JPEG, :func:`to_displayed_frame` turns the boxes (:func:`orient_box`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "TruthImage",
    "counted_folder",
    "orient_box",
    "read_coco_truth",
    "read_inselect_truth",
    "to_displayed_frame",
]

Box = tuple[float, float, float, float]
Frame = Literal["auto", "stored", "displayed"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass
class TruthImage:
    """What is in one image: specimens to find, regions to ignore, debris not to fire on.

    ``expected_count`` is set (and the box lists are empty) for images known only by their count.
    """

    path: Path
    width: int = 0
    """Width of the frame the boxes were drawn in (0: unknown, for counted images)."""
    height: int = 0
    specimens: list[Box] = field(default_factory=list)
    ignore: list[Box] = field(default_factory=list)
    debris: list[Box] = field(default_factory=list)
    attributes: list[dict] = field(default_factory=list)
    """Per specimen, the annotation's ``attributes`` (``taxon``, ``touching``, ``note``, ...)."""
    um_per_px: float | None = None
    expected_count: int | None = None
    frame: Frame = "auto"
    """Which frame the boxes are in: ``stored`` (the pixel array as stored), ``displayed`` (EXIF
    orientation applied) or ``auto`` (decided by the image size, :func:`to_displayed_frame`)."""

    @property
    def file_name(self) -> str:
        return self.path.name

    @property
    def has_boxes(self) -> bool:
        return self.expected_count is None


def _xywh(values: object, where: str) -> Box:
    try:
        x, y, w, h = (float(v) for v in values)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bbox must be four numbers [x, y, w, h]; given {values!r}") from exc
    if w < 0 or h < 0:
        raise ValueError(f"{where}: bbox width and height must be >= 0; given {values!r}")
    return (x, y, w, h)


def read_coco_truth(path: Path, images_dir: Path | None = None, *, frame: Frame = "auto") -> list[TruthImage]:
    """Every image of a COCO detection file with its specimens, ignore regions and debris.

    ``images_dir`` (default: the COCO file's folder) holds the images named by ``file_name``.
    The image entry's ``um_per_px``, when present, is the scale.

    Raises ValueError naming the file and the annotation when the document is malformed.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable COCO JSON file ({exc})") from exc
    if not isinstance(doc, dict) or "images" not in doc:
        raise ValueError(f"{path}: not a COCO detection file (no 'images' list)")
    folder = Path(images_dir) if images_dir is not None else path.parent
    debris_ids = {c["id"] for c in doc.get("categories", []) if str(c.get("name", "")).lower() == "debris"}
    images: dict[int, TruthImage] = {}
    for img in doc["images"]:
        scale = img.get("um_per_px")
        images[img["id"]] = TruthImage(
            path=folder / str(img["file_name"]),
            width=int(img.get("width", 0)),
            height=int(img.get("height", 0)),
            um_per_px=float(scale) if scale else None,
            frame=frame,
        )
    for ann in doc.get("annotations", []):
        where = f"{path}: annotation {ann.get('id')}"
        image = images.get(ann.get("image_id"))
        if image is None:
            raise ValueError(f"{where} points at unknown image {ann.get('image_id')}")
        box = _xywh(ann.get("bbox"), where)
        attrs = dict(ann.get("attributes") or {})
        if ann.get("iscrowd") or attrs.get("uncertain"):
            image.ignore.append(box)
        elif ann.get("category_id") in debris_ids:
            image.debris.append(box)
        elif box[2] > 0 and box[3] > 0:
            image.specimens.append(box)
            image.attributes.append(attrs)
    return list(images.values())


def read_inselect_truth(path: Path) -> TruthImage:
    """One Inselect document (``.inselect``) and its scan (same stem, ``scanned extension``).

    Inselect's boxes are the crops a curator cut out of a drawer scan: a pinned specimen *with*
    its labels, so they are wider than the animal's own edge.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable Inselect document ({exc})") from exc
    suffix = str(doc.get("scanned extension", ".jpg"))
    scan = path.with_suffix(suffix)
    if not scan.is_file():
        raise ValueError(f"{path}: its scan {scan.name} is missing")
    from PIL import Image, ImageOps

    with Image.open(scan) as im:
        width, height = ImageOps.exif_transpose(im).size if im.getexif().get(0x0112, 1) != 1 else im.size
    truth = TruthImage(path=scan, width=width, height=height, frame="displayed")
    for k, item in enumerate(doc.get("items", []), start=1):
        left, top, w, h = _xywh(item.get("rect"), f"{path}: item {k}")
        truth.specimens.append((left * width, top * height, w * width, h * height))
        truth.attributes.append(dict(item.get("fields") or {}))
    return truth


def counted_folder(folder: Path, count: int, *, um_per_px: float | None = None) -> list[TruthImage]:
    """Every image in ``folder`` (sorted by name), each known to hold ``count`` specimens."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: folder of counted images does not exist")
    if count < 0:
        raise ValueError(f"count must be >= 0; given {count}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [TruthImage(path=p, um_per_px=um_per_px, expected_count=count) for p in files]


def orient_box(box: Box, orientation: int, stored_size: tuple[int, int]) -> Box:
    """A box drawn on the stored pixel array, in the displayed frame under EXIF ``orientation``.

    ``stored_size`` is ``(width, height)`` of the stored array. Orientations follow EXIF 2.3
    (tag 0x0112), as :func:`labpipe.imaging.pixels.apply_orientation` shows them.

    Examples
    --------
    Orientation 6 (the camera was turned clockwise): a 100 x 50 stored image is shown 50 x 100,
    and a box at the stored top-left is shown at the top-right.

    >>> orient_box((0, 0, 10, 5), 6, (100, 50))
    (45.0, 0.0, 5.0, 10.0)
    >>> orient_box((0, 0, 10, 5), 3, (100, 50))
    (90.0, 45.0, 10.0, 5.0)
    """
    x, y, w, h = (float(v) for v in box)
    sw, sh = stored_size
    if orientation not in range(1, 9):
        raise ValueError(f"EXIF orientation must be 1..8; given {orientation}")
    corners = [(x, y), (x + w, y + h)]

    def move(px: float, py: float) -> tuple[float, float]:
        if orientation == 1:
            return px, py
        if orientation == 2:
            return sw - px, py
        if orientation == 3:
            return sw - px, sh - py
        if orientation == 4:
            return px, sh - py
        if orientation == 5:
            return py, px
        if orientation == 6:
            return sh - py, px
        if orientation == 7:
            return sh - py, sw - px
        return py, sw - px  # 8

    pts = [move(px, py) for px, py in corners]
    x0, x1 = sorted((pts[0][0], pts[1][0]))
    y0, y1 = sorted((pts[0][1], pts[1][1]))
    return (x0, y0, x1 - x0, y1 - y0)


def to_displayed_frame(truth: TruthImage, stored_size: tuple[int, int], orientation: int) -> TruthImage:
    """``truth`` with every box in the displayed frame of its image.

    With ``frame="auto"``: boxes drawn on an image whose recorded size is the stored size but not
    the displayed one (a JPEG turned by 90 degrees) are turned; where both sizes agree (no
    rotation, or a turn by 180 degrees) the boxes are taken as displayed, the frame every viewer
    and labpipe show. ``frame="stored"`` always turns them; ``frame="displayed"`` never does.
    """
    if orientation == 1 or not truth.has_boxes:
        return truth
    sw, sh = stored_size
    displayed = (sh, sw) if orientation >= 5 else (sw, sh)
    recorded = (truth.width, truth.height)
    turn = truth.frame == "stored" or (
        truth.frame == "auto" and recorded == (sw, sh) and recorded != displayed
    )
    if not turn:
        return truth

    def move(boxes: list[Box]) -> list[Box]:
        return [orient_box(b, orientation, stored_size) for b in boxes]

    return TruthImage(
        path=truth.path,
        width=displayed[0],
        height=displayed[1],
        specimens=move(truth.specimens),
        ignore=move(truth.ignore),
        debris=move(truth.debris),
        attributes=truth.attributes,
        um_per_px=truth.um_per_px,
        expected_count=truth.expected_count,
        frame="displayed",
    )
