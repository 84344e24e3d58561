"""Synthetic plates built from real cut-outs, for the detection table (exact boxes, known taxa).

A real stitched dish with every specimen boxed does not exist in ``../shared/data``; these plates
fill the gap with real animals on a rendered dish (:mod:`labpipe.synth`):

* ``mixed``: 6000 x 6000 at 5 um/px, procedural beetles, real ground beetles
  (``carabidae-crops``) and real springtails (``collembola/positive``, 0.3-2 mm), touching pairs
  and debris, on filter paper;
* ``dark``: springtails pale on a dark dish bottom (as springtail samples in ethanol are imaged);
* ``crowded``: a 12000 x 12000 dish holding 500 specimens of all three kinds (beetles of 1-4 mm,
  as in ``labpipe bench``'s crowded plate: larger ones do not fit).

Plates are rendered once into a cache folder (named by a hash of their spec) and reused.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from labpipe.evaluation.real_table import EvalSet
from labpipe.evaluation.truth import TruthImage, read_coco_truth

__all__ = ["plate_specs", "synthetic_sets"]

SPRINGTAIL_LENGTH_UM = (300.0, 2000.0)
"""Springtails of leaf litter: 0.3-2 mm body length (most under 1 mm)."""


def plate_specs(data: Path, *, quick: bool = False) -> dict[str, object]:
    """The plates of the table by set name (``PlateSpec`` objects)."""
    from labpipe.synth.plate import CutoutSource, PlateSpec

    beetles = Path(data) / "carabidae-crops"
    springtails = CutoutSource(
        Path(data) / "collembola" / "positive", "springtail", "plain", 0.35, SPRINGTAIL_LENGTH_UM
    )
    mixed = PlateSpec(
        width=6000,
        height=6000,
        n_specimens=60,
        n_touching_pairs=8,
        n_debris=40,
        um_per_px=5.0,
        real_cutouts=beetles,
        real_fraction=0.3,
        cutout_sources=(springtails,),
        seed=11,
    )
    if quick:
        return {
            "synthetic: small mixed plate with springtails": replace(
                mixed,
                width=3000,
                height=3000,
                n_specimens=20,
                n_touching_pairs=2,
                n_debris=15,
                specimen_length_um=(1000.0, 3000.0),
                seed=5,
            )
        }
    return {
        "synthetic: mixed plate, touching pairs": mixed,
        "synthetic: springtails on a dark dish": PlateSpec(
            width=4000,
            height=4000,
            n_specimens=50,
            n_touching_pairs=5,
            n_debris=30,
            um_per_px=5.0,
            real_cutouts=None,
            cutout_sources=(replace(springtails, fraction=0.8),),
            background="dark",
            seed=12,
        ),
        "synthetic: crowded 12000x12000 dish, 500 specimens": replace(
            mixed,
            width=12000,
            height=12000,
            n_specimens=440,
            n_touching_pairs=30,
            n_debris=150,
            specimen_length_um=(1000.0, 4000.0),
            seed=13,
        ),
    }


def _spec_key(spec: object) -> str:
    """A short hash naming a spec's files (paths inside the spec are taken by name)."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:10]


def render_set(spec: object, work: Path) -> list[TruthImage]:
    """The plate of ``spec`` (rendered into ``work`` unless already there) with its truth."""
    from labpipe.synth.coco import write_coco
    from labpipe.synth.plate import layout_plate, write_plate

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    key = _spec_key(spec)
    image = work / f"plate-{key}.tif"
    coco = work / f"plate-{key}.coco.json"
    if not image.is_file():
        write_coco(write_plate(spec, image), image.name, coco)  # type: ignore[arg-type]
    elif not coco.is_file():
        write_coco(layout_plate(spec), image.name, coco)  # type: ignore[arg-type]
    return read_coco_truth(coco, work)


def synthetic_sets(work: Path, data: Path, *, quick: bool = False) -> list[EvalSet]:
    """The synthetic sets of the table; each plate is rendered when its set is first loaded."""
    sets = []
    for name, spec in plate_specs(data, quick=quick).items():
        sets.append(EvalSet(name, "synthetic", lambda spec=spec: render_set(spec, work)))
    return sets
