"""Labelled crops for training and evaluation: one folder per family, split 70/10/20 by family.

The layout labs already use: ``DATA_DIR/<Family>/<image files>``; the folder name is the family
(symbolic links to folders elsewhere are followed, so one training set can gather folders from
several places). Every crop is read through the production path (the lazy reader, then
:func:`labpipe.crops.pad_to_square`), so training and inference see the same squares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from labpipe.crops import pad_to_square
from labpipe.imaging import open_image

__all__ = [
    "IMAGE_SUFFIXES",
    "SPLITS",
    "FamilyImages",
    "LabelledImage",
    "image_files",
    "load_square",
    "scan_family_folders",
    "split_counts",
    "stratified_split",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), sorted by name."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of images")
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def load_square(path: Path) -> np.ndarray:
    """The whole image as a square ``uint8`` RGB crop, padded with its border-mean colour.

    Exactly the production path of a crop (:func:`labpipe.imaging.open_image` then
    :func:`labpipe.crops.pad_to_square`); an already square crop comes back unchanged.
    """
    with open_image(path) as image:
        return pad_to_square(image.read_region(0, 0, image.width, image.height))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int
    """Index into :attr:`FamilyImages.families`."""


@dataclass(frozen=True)
class FamilyImages:
    """The images of a ``DATA_DIR`` with one folder per family."""

    root: Path
    families: tuple[str, ...]
    """Folder names, sorted: the label list (output order of a model trained on them)."""
    items: tuple[LabelledImage, ...]

    @property
    def labels(self) -> np.ndarray:
        return np.array([item.label for item in self.items], dtype=np.int64)

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.items]

    def counts(self) -> dict[str, int]:
        labels = self.labels
        return {f: int((labels == i).sum()) for i, f in enumerate(self.families)}


def scan_family_folders(data_dir: Path, families: Sequence[str] | None = None) -> FamilyImages:
    """Find ``DATA_DIR/<Family>/*.{jpg,png,tif,...}``.

    Parameters
    ----------
    data_dir:
        The folder holding one sub-folder per family.
    families:
        The label list to use (a trained model's, for evaluation). ``None``: the sorted folder
        names. A folder whose name is not in ``families`` is an error (it names a family the
        model does not know); a family without a folder is allowed (no images of it).

    Raises
    ------
    FileNotFoundError
        ``data_dir`` is not a folder, or it holds no family folder with images.
    ValueError
        A folder names a family not in ``families``.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (expected one sub-folder per family)")
    folders = {
        p.name: image_files(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }
    folders = {name: files for name, files in folders.items() if files}
    if not folders:
        raise FileNotFoundError(f"{root}: no family folders with images (expected {root}/<Family>/*.jpg)")
    names = tuple(sorted(folders)) if families is None else tuple(families)
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise ValueError(f"{root}: folders {unknown} name no family of the model {list(names)}")
    index = {name: i for i, name in enumerate(names)}
    items = tuple(
        LabelledImage(path, index[name])
        for name in sorted(folders, key=index.__getitem__)
        for path in folders[name]
    )
    return FamilyImages(root, names, items)


def _split_sizes(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Validation and test sizes rounded, at least one each when ``n >= 3``; the rest trains."""
    _, f_val, f_test = fractions
    n_val = max(1, round(n * f_val))
    n_test = max(1, round(n * f_test))
    return n - n_val - n_test, n_val, n_test


def _class_seed(c: int, names: Sequence[str] | None) -> int:
    if names is None:
        return c
    return int.from_bytes(hashlib.sha256(names[c].encode("utf-8")).digest()[:8], "little")


def stratified_split(
    labels: npt.ArrayLike,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Assign each item to ``train``, ``val`` or ``test``, class by class (stratified).

    Within each class the items are shuffled with a generator seeded by the seed and the class
    (its name when ``names`` is given, else its index), then the first ``round(n * f_val)`` go to
    validation, the next ``round(n * f_test)`` to test and the rest to training; validation and
    test get at least one item each. With ``names``, a family's split depends only on its own
    items, its name and the seed, so adding or removing a family does not reshuffle the others.

    Parameters
    ----------
    labels:
        ``(N,)`` integer class of each item, in a stable order (e.g. sorted file names).
    fractions:
        ``(train, val, test)``, summing to 1.
    seed:
        Recorded with the model, so the split can be rebuilt.
    names:
        Class names (``names[c]`` for label ``c``), used to seed each class's shuffle.

    Returns
    -------
    ``(N,)`` array of ``"train"``, ``"val"``, ``"test"``.

    Raises
    ------
    ValueError
        Fractions that do not sum to 1, or a class with fewer than 3 items (it cannot be in
        all three splits).

    Example
    -------
    >>> s = stratified_split(np.repeat([0, 1], 10), seed=0)
    >>> [(s[:10] == k).sum() for k in ("train", "val", "test")]
    [np.int64(7), np.int64(1), np.int64(2)]
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, given shape {y.shape} dtype {y.dtype}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, given {fractions}")
    out = np.empty(len(y), dtype="<U5")
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < 3:
            raise ValueError(f"class {c} has {len(members)} items; at least 3 are needed (train, val, test)")
        rng = np.random.default_rng([seed, _class_seed(int(c), names)])
        shuffled = members[rng.permutation(len(members))]
        _, n_val, n_test = _split_sizes(len(members), fractions)
        out[shuffled[:n_val]] = "val"
        out[shuffled[n_val : n_val + n_test]] = "test"
        out[shuffled[n_val + n_test :]] = "train"
    return out


def split_counts(
    labels: npt.ArrayLike, split: npt.ArrayLike, families: Sequence[str]
) -> dict[str, dict[str, int]]:
    """``{family: {"train": n, "val": n, "test": n}}``."""
    y = np.asarray(labels)
    s = np.asarray(split)
    return {f: {name: int(((y == i) & (s == name)).sum()) for name in SPLITS} for i, f in enumerate(families)}
