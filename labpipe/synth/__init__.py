"""Synthetic plates with exact ground truth, for tests, demos, detector evaluation and benchmarks.

A plate is a rendered Petri dish (dark surround, glass rim, filter paper with fibre texture,
uneven lighting, stitching seams) holding procedural beetles and, optionally, real beetles cut
out of photographs, some of them touching in pairs, plus debris that is not a specimen. The layout
is decided before rendering, so large plates are written tile by tile and every box in the truth
equals the mask that was pasted.
"""

from labpipe.synth.coco import load_coco, write_coco
from labpipe.synth.plate import (
    DEBRIS_MAX_UM,
    GroundTruthObject,
    PlateSpec,
    PlateTruth,
    layout_plate,
    object_masks,
    render_plate,
    render_region,
    write_plate,
)
from labpipe.synth.specimens import extract_cutout, load_cutout

__all__ = [
    "DEBRIS_MAX_UM",
    "GroundTruthObject",
    "PlateSpec",
    "PlateTruth",
    "extract_cutout",
    "layout_plate",
    "load_coco",
    "load_cutout",
    "object_masks",
    "render_plate",
    "render_region",
    "write_coco",
    "write_plate",
]
