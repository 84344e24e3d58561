"""An out-of-the-box family classifier: ImageNet-1k EfficientNet-Lite0, arthropod classes summed per family.

ImageNet-1k has 47 arthropod classes, 30 of which name (or almost name) one family: ``ground beetle``
and ``tiger beetle`` are Carabidae, ``ant`` is Formicidae, and so on. The table
``imagenet_families.csv`` (one row per arthropod class: family, order and a justification for each
choice or non-choice) maps them; every class absent from the table is not an arthropod.

How a crop is decided
---------------------
1. Class probabilities: ``softmax(logits / T)``. ``T`` is a temperature (Guo et al., "On
   Calibration of Modern Neural Networks", ICML 2017); the built-in model has no calibration data
   of the lab's own, so ``T = 1`` unless given.
2. Family probabilities: the probability of a family is the SUM of the probabilities of its
   ImageNet classes, i.e. the posterior of an internal node of the label hierarchy is the sum of its
   leaves' posteriors (Deng et al., "Hedging Your Bets: Optimizing Accuracy-Specificity Trade-offs
   in Large Scale Visual Recognition", CVPR 2012). Carabidae = p(ground beetle) + p(tiger beetle).
3. Decision (:func:`decide`): Chow's reject option (Chow, "On Optimum Recognition Error and Reject
   Tradeoff", IEEE Trans. Inf. Theory 16(1), 1970): accept the best family only when its
   probability reaches a threshold, and reject when the model's best guess is not a family at all.
   The precedence is documented in :func:`decide`.

Every result carries ``model_version`` = ``name@w<sha256(weights)[:12]>-l<sha256(table +
class list)[:12]>``, so editing the mapping table makes a new model version.

Example
-------
>>> clf = ImageNetFamilyClassifier(threshold=0.5)          # doctest: +SKIP
>>> clf.classify([square_rgb_uint8])[0].family             # doctest: +SKIP
'Carabidae'
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from labpipe.classify.base import (
    REJECT_FAMILY_UNRESOLVED,
    REJECT_LOW_CONFIDENCE,
    REJECT_NOT_ARTHROPOD,
    Classification,
)
from labpipe.classify.efficientnet_lite import (
    INPUT_SIZE,
    MEAN,
    STD,
    EfficientNetLite,
    build_efficientnet_lite0,
    default_weights_path,
    load_lite0_state_dict,
)
from labpipe.errors import ModelLoadError

__all__ = [
    "CLASSES_FILE",
    "DEFAULT_THRESHOLD",
    "FAMILY_TABLE_FILE",
    "NAME",
    "Decision",
    "FamilyMapping",
    "ImageNetClass",
    "ImageNetFamilyClassifier",
    "LabelSpace",
    "decide",
    "family_probabilities",
    "file_sha256",
    "load_family_table",
    "load_imagenet_classes",
    "to_model_input",
]

NAME = "imagenet-efficientnet-lite0"
CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
"""ImageNet-1k ``synset<TAB>lemmas`` in output order; ``#`` lines are comments."""
FAMILY_TABLE_FILE = Path(__file__).with_name("imagenet_families.csv")
"""Arthropod ImageNet classes -> family (empty where unresolved), order, justification."""
NUM_IMAGENET_CLASSES = 1000
DEFAULT_THRESHOLD = 0.5
"""The built-in classifier's rejection threshold: the lowest that made no wrong acceptances on the
real ground-beetle and bee crops of ../shared/data, and one on the ants."""
_TABLE_COLUMNS = ("imagenet_index", "imagenet_name", "family", "order", "arthropod", "justification")


# --------------------------------------------------------------------------------------------------
# Label files


@dataclass(frozen=True)
class ImageNetClass:
    """One ImageNet-1k class: output index, WordNet synset id and its lemmas (first = display name)."""

    index: int
    synset: str
    lemmas: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.lemmas[0]


def load_imagenet_classes(path: Path = CLASSES_FILE) -> list[ImageNetClass]:
    """Read the class list (``synset<TAB>comma-separated lemmas``, ``#`` comment lines skipped).

    Raises :class:`ModelLoadError` naming the line when the file is malformed or has not exactly
    1000 classes.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read the ImageNet class list: {exc}") from exc
    classes: list[ImageNetClass] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        synset, sep, lemmas = line.partition("\t")
        names = tuple(s.strip() for s in lemmas.split(",") if s.strip())
        if not sep or not synset.startswith("n") or not names:
            raise ModelLoadError(path, f"line {line_no}: expected 'synset<TAB>name', found {line!r}")
        classes.append(ImageNetClass(len(classes), synset, names))
    if len(classes) != NUM_IMAGENET_CLASSES:
        raise ModelLoadError(path, f"{len(classes)} classes, expected {NUM_IMAGENET_CLASSES}")
    return classes


@dataclass(frozen=True)
class FamilyMapping:
    """One row of ``imagenet_families.csv``. ``family`` is ``None`` where the class names no single family."""

    imagenet_index: int
    imagenet_name: str
    family: str | None
    order: str | None
    arthropod: bool
    justification: str


def load_family_table(
    path: Path = FAMILY_TABLE_FILE, classes: Sequence[ImageNetClass] | None = None
) -> list[FamilyMapping]:
    """Read and check the ImageNet-class -> family table.

    Checks: the header; indices are integers in [0, 1000) and unique; ``arthropod`` is yes/no; a
    family is only given for arthropods; and, when ``classes`` is given, each row's
    ``imagenet_name`` equals the display name of the class at that index (so a shifted index fails).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read the family table: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = tuple(next(reader, ()))
    if header != _TABLE_COLUMNS:
        raise ModelLoadError(path, f"header is {header}, expected {_TABLE_COLUMNS}")
    rows: list[FamilyMapping] = []
    seen: set[int] = set()
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(_TABLE_COLUMNS):
            raise ModelLoadError(path, f"line {line_no}: {len(row)} fields, expected {len(_TABLE_COLUMNS)}")
        index_text, name, family, order, arthropod_text, justification = (f.strip() for f in row)
        try:
            index = int(index_text)
        except ValueError:
            problem = f"line {line_no}: imagenet_index {index_text!r} is not an integer"
            raise ModelLoadError(path, problem) from None
        if not 0 <= index < NUM_IMAGENET_CLASSES or index in seen:
            raise ModelLoadError(path, f"line {line_no}: imagenet_index {index} out of range or repeated")
        seen.add(index)
        if arthropod_text not in ("yes", "no"):
            problem = f"line {line_no}: arthropod must be yes or no, found {arthropod_text!r}"
            raise ModelLoadError(path, problem)
        arthropod = arthropod_text == "yes"
        if family and not arthropod:
            raise ModelLoadError(path, f"line {line_no}: family {family!r} given for a non-arthropod class")
        if classes is not None and classes[index].name != name:
            raise ModelLoadError(
                path,
                f"line {line_no}: index {index} is {classes[index].name!r} in the class list, "
                f"the table says {name!r}",
            )
        rows.append(FamilyMapping(index, name, family or None, order or None, arthropod, justification))
    return rows


@dataclass(frozen=True)
class LabelSpace:
    """ImageNet classes, the families they map to, and per-class lookups used at inference."""

    classes: tuple[ImageNetClass, ...]
    families: tuple[str, ...]
    """Sorted family names."""
    class_family: tuple[int, ...]
    """Per ImageNet class: index into :attr:`families`, or -1 where the class has no family."""
    class_arthropod: tuple[bool, ...]

    @classmethod
    def load(cls, classes_path: Path = CLASSES_FILE, table_path: Path = FAMILY_TABLE_FILE) -> LabelSpace:
        classes = load_imagenet_classes(classes_path)
        table = load_family_table(table_path, classes)
        families = tuple(sorted({row.family for row in table if row.family}))
        family_index = {f: i for i, f in enumerate(families)}
        class_family = [-1] * len(classes)
        arthropod = [False] * len(classes)
        for row in table:
            arthropod[row.imagenet_index] = row.arthropod
            if row.family:
                class_family[row.imagenet_index] = family_index[row.family]
        return cls(tuple(classes), families, tuple(class_family), tuple(arthropod))


def file_sha256(*paths: Path) -> str:
    """Hex SHA-256 of the concatenated bytes of ``paths`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Pure functions: preprocessing, aggregation, decision


def to_model_input(
    crops: Sequence[np.ndarray],
    size: int = INPUT_SIZE,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """Square ``uint8`` crops -> normalised ``(N, 3, size, size)`` float32 tensor.

    Each crop is resized with antialiased bicubic interpolation (the resampling of the TensorFlow
    EfficientNet evaluation pipeline) on its ``uint8`` samples (PyTorch's vectorised uint8 kernel,
    7 times faster than on float32 for a 1160-px crop and within one grey level of it; the result
    is rounded to ``uint8``), scaled to [0, 1] and normalised with ``(x - mean) / std`` (for
    EfficientNet-Lite: [-1, 1]). Crops must already be square (pad them
    first, see ``labpipe.crops``): resizing a non-square crop would distort the specimen.

    Parameters
    ----------
    crops:
        ``(H, H, 3)`` RGB arrays; ``(H, H)`` or ``(H, H, 1)`` grey is repeated to RGB and an alpha
        channel ``(H, H, 4)`` is dropped.
    size:
        Output side in pixels.
    """
    if size < 1:
        raise ValueError(f"size must be positive, given size {size}")
    if len(crops) == 0:
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    batch = torch.empty((len(crops), 3, size, size), dtype=torch.float32)
    for i, crop in enumerate(crops):
        arr = np.asarray(crop)
        if arr.dtype != np.uint8:
            raise ValueError(f"crop {i}: expected uint8, given {arr.dtype}")
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1:
            raise ValueError(f"crop {i}: expected an (H, H, 3) image, given shape {arr.shape}")
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(f"crop {i}: not square, given shape {arr.shape} (pad it to a square first)")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        # torch.tensor copies: the input may be a read-only view (np.asarray of a PIL image).
        t = torch.tensor(arr[:, :, :3]).permute(2, 0, 1)[None]
        if t.shape[-1] != size:
            t = F.interpolate(
                t.contiguous(memory_format=torch.channels_last),
                size=(size, size),
                mode="bicubic",
                antialias=True,
                align_corners=False,
            )
        batch[i] = t[0]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch / 255.0 - mean_t) / std_t


def family_probabilities(class_probs: np.ndarray, class_family: Sequence[int], n_families: int) -> np.ndarray:
    """Sum class probabilities into family probabilities (Deng et al. 2012: a node's posterior is
    the sum of its leaves').

    Parameters
    ----------
    class_probs:
        ``(N, C)`` probabilities (rows sum to 1).
    class_family:
        ``C`` family indices; ``-1`` for classes that belong to no family (their mass goes nowhere,
        so family probabilities of a row sum to at most 1).
    n_families:
        Number of families.

    Returns
    -------
    ``(N, n_families)`` float64 array.

    Example
    -------
    >>> family_probabilities(np.array([[0.5, 0.3, 0.2]]), [0, 0, -1], 1)
    array([[0.8]])
    """
    probs = np.asarray(class_probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_family):
        raise ValueError(f"class_probs must be (N, {len(class_family)}), given shape {probs.shape}")
    membership = np.zeros((len(class_family), n_families), dtype=np.float64)
    for c, f in enumerate(class_family):
        if f >= n_families:
            raise ValueError(f"class {c} maps to family {f}, but n_families is {n_families}")
        if f >= 0:
            membership[c, f] = 1.0
    return probs @ membership


class Decision(NamedTuple):
    """What :func:`decide` returns: the best family (kept even when rejected, for review)."""

    family: str | None
    probability: float
    rejected: bool
    reason: str | None


def decide(
    family_probs: dict[str, float],
    top_class_is_arthropod: bool,
    top_class_has_family: bool,
    threshold: float,
    *,
    top_class_name: str = "?",
    top_class_probability: float = 1.0,
) -> Decision:
    """Accept or reject one crop from its family probabilities and its top ImageNet class.

    The decision is an argmax over a partition of the 1000 classes: each family is one cell (its
    probability the sum of its classes'), every class without a family is a cell of its own. The
    top ImageNet class (probability ``q``) is the winning unmapped cell whenever it has no family
    and ``q`` exceeds the best family's probability ``p``. Precedence:

    1. The top class has no family and ``q > p``: reject. ``not_arthropod`` when the top class is
       not an arthropod (the crop is debris, background, or something ImageNet knows but the lab
       does not count), else ``family_unresolved`` (an arthropod class naming no single family,
       e.g. ``fly``).
    2. Otherwise ``p < threshold``: reject, ``low_confidence`` (Chow's reject option, 1970).
    3. Otherwise accept the best family.

    So a family whose classes split the mass (ground beetle 0.30 + tiger beetle 0.30 = Carabidae
    0.60, against fly 0.35) is accepted, while a lone unmapped class that beats every family
    decides the rejection. With the default ``top_class_probability=1.0`` rule 1 fires whenever the
    top class has no family (the strict, class-first reading).

    Parameters
    ----------
    family_probs:
        Family -> summed probability (may be empty).
    top_class_is_arthropod, top_class_has_family:
        About the single most probable ImageNet class. A class with a family is an arthropod.
    threshold:
        In [0, 1]: the least family probability that is accepted.
    top_class_name, top_class_probability:
        For rule 1 (``q``) and the human-readable reason.

    Returns
    -------
    Decision
        ``(family, probability, rejected, reason)``; ``reason`` is ``None`` when accepted, else
        ``"<code>: <explanation>"`` with a code from ``labpipe.classify.base``.

    Example
    -------
    >>> decide({"Carabidae": 0.9}, True, True, 0.5)
    Decision(family='Carabidae', probability=0.9, rejected=False, reason=None)
    """
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ValueError(f"threshold must be in [0, 1], given threshold {threshold}")
    if top_class_has_family and not top_class_is_arthropod:
        raise ValueError("top_class_has_family=True requires top_class_is_arthropod=True")
    if family_probs:
        family, p = min(family_probs.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: by name
        p = float(p)
    else:
        family, p = None, 0.0
    q = float(top_class_probability)
    top = f"top class '{top_class_name}' {q:.2f}"
    if not top_class_has_family and q > p:
        best = f"; best family {family} {p:.2f}" if family is not None else ""
        if not top_class_is_arthropod:
            return Decision(family, p, True, f"{REJECT_NOT_ARTHROPOD}: {top}{best}")
        return Decision(family, p, True, f"{REJECT_FAMILY_UNRESOLVED}: {top} names no family{best}")
    if family is None or p < threshold:
        what = f"{family} {p:.2f}" if family is not None else "no family"
        return Decision(family, p, True, f"{REJECT_LOW_CONFIDENCE}: {what} < threshold {threshold:.2f}")
    return Decision(family, p, False, None)


# --------------------------------------------------------------------------------------------------
# The classifier


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Set torch's intra-op threads for the block (``0``: leave as is), then restore."""
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ImageNetFamilyClassifier:
    """Family classifier from ImageNet-1k EfficientNet-Lite0 and the arthropod family table.

    Implements ``labpipe.classify.base.FamilyClassifier``.

    Parameters
    ----------
    threshold:
        Least summed family probability that is accepted (see :func:`decide`).
    batch_size:
        Crops per forward pass.
    threads:
        Torch CPU threads while classifying (0: torch's current setting).
    top_k:
        Families reported in ``Classification.top``.
    temperature:
        Logits are divided by it before the softmax (Guo et al. 2017); 1 for the uncalibrated model.
    weights, classes_path, table_path:
        Override the packaged weight file and label files (tests, experiments).
    """

    name: str = NAME

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        batch_size: int = 16,
        threads: int = 0,
        top_k: int = 3,
        temperature: float = 1.0,
        weights: Path | None = None,
        classes_path: Path = CLASSES_FILE,
        table_path: Path = FAMILY_TABLE_FILE,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], given threshold {threshold}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, given batch_size {batch_size}")
        if threads < 0:
            raise ValueError(f"threads must be 0 (all) or positive, given threads {threads}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, given top_k {top_k}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, given temperature {temperature}")
        self.threshold = threshold
        self.batch_size = batch_size
        self.threads = threads
        self.top_k = top_k
        self.temperature = temperature
        self.input_size = INPUT_SIZE
        self.labels = LabelSpace.load(classes_path, table_path)
        self.families: list[str] = list(self.labels.families)
        weights_path = weights if weights is not None else default_weights_path()
        self.weights_path = weights_path
        model = build_efficientnet_lite0()
        with _torch_threads(threads):
            load_lite0_state_dict(model, weights_path)
        self.model: EfficientNetLite = model.eval().to(memory_format=torch.channels_last)
        self.weights_hash = file_sha256(weights_path)
        """Full SHA-256 of the weight file."""
        self.labels_hash = file_sha256(table_path, classes_path)
        """Full SHA-256 of the family table followed by the class list."""
        self.version = f"{NAME}@w{self.weights_hash[:12]}-l{self.labels_hash[:12]}"
        self.backbone_sha256 = self.weights_hash
        """The backbone is this weight file: a gate on it reuses the features (``classify.gate``)."""

    def __repr__(self) -> str:
        return f"ImageNetFamilyClassifier(version={self.version!r}, threshold={self.threshold})"

    def _batches(self, crops: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        for start in range(0, len(crops), self.batch_size):
            x = to_model_input(crops[start : start + self.batch_size], self.input_size)
            yield x.contiguous(memory_format=torch.channels_last)

    def class_probabilities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, 1000)`` ImageNet class probabilities, ``softmax(logits / temperature)``."""
        out = np.empty((len(crops), NUM_IMAGENET_CLASSES), dtype=np.float32)
        row = 0
        with _torch_threads(self.threads), torch.inference_mode():
            for x in self._batches(crops):
                probs = torch.softmax(self.model(x) / self.temperature, dim=1)
                out[row : row + len(x)] = probs.numpy()
                row += len(x)
        return out

    def features(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, 1280)`` pooled backbone features (for training heads on frozen features)."""
        out = np.empty((len(crops), self.model.num_features), dtype=np.float32)
        row = 0
        with _torch_threads(self.threads), torch.inference_mode():
            for x in self._batches(crops):
                out[row : row + len(x)] = self.model.forward_features(x).numpy()
                row += len(x)
        return out

    def classifications_from_probabilities(
        self, class_probs: np.ndarray, threshold: float | None = None
    ) -> list[Classification]:
        """Decide each row of ``(N, 1000)`` class probabilities (``threshold``: override the default).

        Splitting this from the forward pass lets evaluations try several thresholds on one run.
        """
        threshold = self.threshold if threshold is None else threshold
        fam = family_probabilities(class_probs, self.labels.class_family, len(self.families))
        results: list[Classification] = []
        for probs_row, fam_row in zip(np.asarray(class_probs), fam, strict=True):
            top_class = int(np.argmax(probs_row))
            by_family = {f: float(p) for f, p in zip(self.families, fam_row, strict=True)}
            decision = decide(
                by_family,
                self.labels.class_arthropod[top_class],
                self.labels.class_family[top_class] >= 0,
                threshold,
                top_class_name=self.labels.classes[top_class].name,
                top_class_probability=float(probs_row[top_class]),
            )
            order = np.argsort(-fam_row, kind="stable")[: self.top_k]
            top = [(self.families[i], float(fam_row[i])) for i in order]
            results.append(
                Classification(
                    family=decision.family,
                    probability=decision.probability,
                    rejected=decision.rejected,
                    reason=decision.reason,
                    top=top,
                    model_version=self.version,
                )
            )
        return results

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        """Classify square RGB ``uint8`` crops (any size; resized inside), ``batch_size`` at a time."""
        if len(crops) == 0:
            return []
        return self.classifications_from_probabilities(self.class_probabilities(crops))

    def classify_with_features(self, crops: Sequence[np.ndarray]) -> tuple[list[Classification], np.ndarray]:
        """:meth:`classify`, and the ``(N, 1280)`` pooled backbone features of the same pass."""
        feats = np.empty((len(crops), self.model.num_features), dtype=np.float32)
        probs = np.empty((len(crops), NUM_IMAGENET_CLASSES), dtype=np.float32)
        row = 0
        with _torch_threads(self.threads), torch.inference_mode():
            for x in self._batches(crops):
                f = self.model.forward_features(x)
                feats[row : row + len(x)] = f.numpy()
                probs[row : row + len(x)] = torch.softmax(
                    self.model.forward_head(f) / self.temperature, dim=1
                ).numpy()
                row += len(x)
        return self.classifications_from_probabilities(probs), feats
