"""Synthetic plates with exact ground truth, for tests, demos, detector evaluation and benchmarks.

A plate is a rendered Petri dish (dark surround, glass rim, filter paper with fibre texture or a
dark dish bottom, uneven lighting, stitching seams) holding procedural beetles and, optionally,
real animals cut out of photographs of several taxa (pinned carabids, springtails, insects in
wells; :class:`CutoutSource`), some of them touching in pairs, plus debris that is not a specimen. The layout
is decided before rendering, so large plates are written tile by tile and every box in the truth
equals the mask that was pasted.
"""

from labpipe.synth.coco import load_coco, write_coco
from labpipe.synth.cutouts import WELL_DISC, extract_plain_cutout, plain_cutout_reason
from labpipe.synth.plate import (
    DEBRIS_MAX_UM,
    CutoutSource,
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
    "WELL_DISC",
    "CutoutSource",
    "GroundTruthObject",
    "PlateSpec",
    "PlateTruth",
    "extract_cutout",
    "extract_plain_cutout",
    "layout_plate",
    "load_coco",
    "load_cutout",
    "object_masks",
    "plain_cutout_reason",
    "render_plate",
    "render_region",
    "write_coco",
    "write_plate",
]
