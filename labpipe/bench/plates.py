"""Benchmark plates: synthetic tiled LZW BigTIFFs of known size and content, made once and kept.

A plate is named by everything that determines it, so a second benchmark run reuses the files of
the first (generating a 20000 x 20000 plate takes longer than processing it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BenchPlate", "ensure_plate", "full_suite", "quick_suite"]


@dataclass(frozen=True)
class BenchPlate:
    """One benchmark plate: side in pixels, specimens (a tenth of them in touching pairs), bit depth."""

    side: int
    specimens: int
    bit_depth: int = 8
    um_per_px: float = 5.0
    specimen_length_um: tuple[float, float] = (1000.0, 4000.0)
    seed: int = 1

    @property
    def pixels(self) -> int:
        return self.side * self.side

    @property
    def name(self) -> str:
        lo, hi = self.specimen_length_um
        return (
            f"plate-{self.side}px-{self.specimens}sp-{self.bit_depth}bit-{self.um_per_px:g}um-"
            f"{lo:g}-{hi:g}-s{self.seed}.tif"
        )

    @property
    def label(self) -> str:
        return f"{self.side}² {self.bit_depth}-bit, {self.specimens} specimens"


def ensure_plate(plate: BenchPlate, folder: Path) -> tuple[Path, list[tuple[float, float, float, float]]]:
    """The plate's file in ``folder`` (generated when missing) and its true specimen boxes."""
    from labpipe.synth.plate import PlateSpec, layout_plate, write_plate

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / plate.name
    pairs = plate.specimens // 10
    spec = PlateSpec(
        width=plate.side,
        height=plate.side,
        n_specimens=plate.specimens - 2 * pairs,
        n_touching_pairs=pairs,
        n_debris=plate.specimens // 2,
        um_per_px=plate.um_per_px,
        specimen_length_um=plate.specimen_length_um,
        bit_depth=plate.bit_depth,
        seed=plate.seed,
    )
    truth = layout_plate(spec) if path.is_file() else write_plate(spec, path)
    return path, [tuple(float(v) for v in o.bbox) for o in truth.specimens]  # type: ignore[misc]


def full_suite() -> list[BenchPlate]:
    """6000², 12000², 20000² at 100 specimens; 12000² at 50, 200, 500; 12000² 16-bit at 200."""
    return [
        BenchPlate(6000, 100),
        BenchPlate(12000, 100),
        BenchPlate(20000, 100),
        BenchPlate(12000, 50),
        BenchPlate(12000, 200),
        BenchPlate(12000, 500),
        BenchPlate(12000, 200, bit_depth=16),
    ]


def quick_suite() -> list[BenchPlate]:
    """Small plates for a smoke run (and the test suite): the same measurements in seconds."""
    return [
        BenchPlate(1500, 10, um_per_px=20.0),
        BenchPlate(3000, 10, um_per_px=20.0),
        BenchPlate(3000, 30, um_per_px=20.0),
        BenchPlate(3000, 10, bit_depth=16, um_per_px=20.0),
    ]
