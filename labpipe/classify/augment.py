"""Training-time augmentation of padded square crops: rotation, flips and colour jitter.

A specimen on a dish lies in any orientation and is photographed under slightly different light,
so the classifier should not care about either: every augmented view is the padded square
rotated by a random angle (the uncovered corners filled with the square's border-mean colour, the
same rule :func:`labpipe.crops.pad_to_square` pads with), flipped at random, and jittered in
brightness, contrast and saturation (the photometric jitter of Krizhevsky, Sutskever and Hinton,
"ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012, in the simple
multiplicative form torchvision's ``ColorJitter`` uses). Plain NumPy and Pillow: no torchvision.

Views are reproducible: :func:`view_rng` derives each view's random generator from a key (for
example the image's cache key) and the view number, so a cached feature and a recomputed one
agree. View 0 is the unaugmented crop.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from labpipe.crops.padding import border_mean_colour

__all__ = ["AugmentSpec", "augment_square", "color_jitter", "rotate_square", "view_rng"]


@dataclass(frozen=True)
class AugmentSpec:
    """How augmented views are drawn. The defaults suit specimens photographed from above."""

    max_rotation: float = 180.0
    """Rotation angle drawn uniformly from ``[-max_rotation, max_rotation]`` degrees."""
    hflip: float = 0.5
    """Probability of a left-right flip."""
    vflip: float = 0.5
    """Probability of a top-bottom flip."""
    brightness: float = 0.2
    """Brightness factor drawn from ``[1 - b, 1 + b]``."""
    contrast: float = 0.2
    """Contrast factor drawn from ``[1 - c, 1 + c]`` (about the mean grey level)."""
    saturation: float = 0.2
    """Saturation factor drawn from ``[1 - s, 1 + s]`` (about each pixel's grey level)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_rotation <= 180.0:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, given {self.max_rotation}")
        for name in ("hflip", "vflip", "brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], given {name} {value}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def view_rng(key: str, view: int, seed: int = 0) -> np.random.Generator:
    """A generator determined by ``(key, view, seed)`` only, so a view can be recomputed exactly.

    Example
    -------
    >>> view_rng("a.png", 1).random() == view_rng("a.png", 1).random()
    True
    """
    digest = hashlib.sha256(f"{seed}\x00{view}\x00{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def rotate_square(square: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a square ``uint8`` RGB crop counter-clockwise about its centre, keeping its size.

    Corners uncovered by the rotation are filled with the border-mean colour of ``square`` (the
    padding rule of the Cyprus study, see :mod:`labpipe.crops.padding`). Multiples of 90 degrees
    are exact (``np.rot90``); other angles are bilinear.

    Example
    -------
    >>> a = np.zeros((2, 2, 3), np.uint8); a[0, 0] = 255
    >>> rotate_square(a, 90)[1, 0, 0]
    np.uint8(255)
    """
    if square.ndim != 3 or square.shape[0] != square.shape[1] or square.shape[2] != 3:
        raise ValueError(f"expected a square (H, H, 3) crop, given shape {square.shape}")
    if square.dtype != np.uint8:
        raise ValueError(f"expected uint8, given {square.dtype}")
    quarter = degrees / 90.0
    if quarter == round(quarter):
        return np.ascontiguousarray(np.rot90(square, k=round(quarter) % 4))
    fill = tuple(int(v) for v in np.clip(np.rint(border_mean_colour(square)), 0, 255))
    rotated = Image.fromarray(square).rotate(
        degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=fill
    )
    return np.asarray(rotated)


def color_jitter(square: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Scale brightness, contrast and saturation of a ``uint8`` RGB image by the given factors.

    Brightness multiplies every value; contrast blends with the image's mean grey level;
    saturation blends each pixel with its own grey level (ITU-R BT.601 luma weights). Factors of
    1 return the image unchanged. Results are rounded and clipped to [0, 255].

    Example
    -------
    >>> color_jitter(np.full((1, 1, 3), 100, np.uint8), 1.5, 1.0, 1.0)[0, 0].tolist()
    [150, 150, 150]
    """
    if min(brightness, contrast, saturation) < 0:
        raise ValueError(f"factors must be >= 0, given {brightness}, {contrast}, {saturation}")
    if brightness == contrast == saturation == 1.0:
        return square.copy()
    x = square.astype(np.float32) * np.float32(brightness)
    luma_weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if contrast != 1.0:
        mean_grey = float((x @ luma_weights).mean())
        x = (x - mean_grey) * np.float32(contrast) + mean_grey
    if saturation != 1.0:
        grey = (x @ luma_weights)[..., None]
        x = (x - grey) * np.float32(saturation) + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment_square(
    square: np.ndarray, rng: np.random.Generator, spec: AugmentSpec | None = None
) -> np.ndarray:
    """One random view of a padded square crop: rotation, flips, then colour jitter (:class:`AugmentSpec`).

    The random numbers are always drawn in the same order, so a given generator state gives the
    same view whatever the spec's switches.
    """
    spec = spec or AugmentSpec()
    angle = float(rng.uniform(-spec.max_rotation, spec.max_rotation))
    flip_lr = bool(rng.random() < spec.hflip)
    flip_ud = bool(rng.random() < spec.vflip)
    b = float(rng.uniform(1 - spec.brightness, 1 + spec.brightness))
    c = float(rng.uniform(1 - spec.contrast, 1 + spec.contrast))
    s = float(rng.uniform(1 - spec.saturation, 1 + spec.saturation))
    out = rotate_square(square, angle) if spec.max_rotation > 0 else square
    if flip_lr:
        out = out[:, ::-1]
    if flip_ud:
        out = out[::-1]
    return color_jitter(np.ascontiguousarray(out), b, c, s)
