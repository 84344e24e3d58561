"""The specimen-or-not gate: is this crop a whole arthropod, or debris, a fragment, empty background?

Every family classifier answers "which family?", even for a crop that holds no animal: a soil
crumb, a fibre, a leg, an empty well. The gate answers the earlier question on the same frozen
ImageNet EfficientNet-Lite0 features the trained heads use: a class-balanced, L2-penalised
logistic model on L2-normalised pooled features, "whole specimen" (0) against "not a specimen"
(1). It stands in front of any classifier, the built-in one included
(:class:`GatedClassifier`, applied by :func:`labpipe.classify.loader.load_classifier` when
``[classifier] gate`` names a gate directory); a crop it rejects gets the reason
``not_a_specimen`` and never counts, while its best family is still named for review.

Threshold: cross-fitted, without any evaluation set. The training crops are cut into stratified
folds, each fold is scored by a gate fitted on the others, and the threshold is the out-of-fold
score that keeps ``keep`` (default 0.98) of the whole specimens. The final gate is then fitted on
every training crop.

A gate directory (``labpipe-gate-v1``)::

    gate.json           format, backbone sha256, feature recipe, threshold and how it was chosen,
                        the training folders (paths, counts, content hash) and out-of-fold figures
    gate.safetensors    the logistic weights (1280) and bias

Written by ``labpipe train gate`` (:func:`train_gate`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labpipe.classify.base import REJECT_NOT_A_SPECIMEN, Classification
from labpipe.classify.ood import (
    OutlierLogistic,
    fit_outlier_logistic,
    load_rule_arrays,
    save_rule_arrays,
    select_distance_threshold,
)
from labpipe.errors import ConfigError, ModelLoadError

__all__ = [
    "GATE_CONFIG",
    "GATE_FORMAT",
    "GATE_WEIGHTS",
    "GatedClassifier",
    "SpecimenGate",
    "fit_gate",
    "gate_out_of_fold_scores",
    "load_gate",
    "train_gate",
]

GATE_FORMAT = "labpipe-gate-v1"
GATE_CONFIG = "gate.json"
GATE_WEIGHTS = "gate.safetensors"
DEFAULT_KEEP = 0.98


@dataclass
class SpecimenGate:
    """A fitted gate: the logistic model on backbone features, and its threshold on the logit."""

    logistic: OutlierLogistic
    threshold: float
    """A crop whose "not a specimen" logit exceeds this is rejected."""
    backbone_sha256: str = ""
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _backbone: Any = None
    input_size: int = 224
    """Side of the square the backbone saw when the gate learnt (``gate.json``)."""

    def shares_features_with(self, classifier: Any) -> bool:
        """True when ``classifier`` computes the very features this gate learnt from: the same frozen
        backbone at the same input size (a classifier trained at 320 px does not feed a 224 px gate)."""
        return (
            getattr(classifier, "backbone_sha256", None) == self.backbone_sha256
            and getattr(classifier, "input_size", None) == self.input_size
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(n,)`` logit of "not a specimen" (larger: less like a whole arthropod)."""
        return self.logistic.score(np.asarray(features, dtype=np.float64))

    def rejects(self, features: np.ndarray) -> np.ndarray:
        """``(n,)`` booleans: the crop is not a whole specimen."""
        return self.score(features) > self.threshold

    def reason(self, score: float) -> str:
        return (
            f"{REJECT_NOT_A_SPECIMEN}: gate score {score:.2f} > {self.threshold:.2f} "
            "(debris, fragment or background)"
        )

    def describe(self) -> dict[str, Any]:
        """What is recorded with each call made behind this gate."""
        return {"gate": self.path, "threshold": self.threshold, "keep": self.info.get("keep")}

    def features(self, crops: Sequence[np.ndarray], *, batch_size: int = 16, threads: int = 0) -> np.ndarray:
        """Pooled ImageNet backbone features of square crops (non-square crops are padded)."""
        from labpipe.classify.efficientnet_lite import MEAN, STD, load_efficientnet_lite0
        from labpipe.classify.imagenet_family import _torch_threads, to_model_input
        from labpipe.crops import pad_to_square

        if self._backbone is None:
            self._backbone = load_efficientnet_lite0().eval().to(memory_format=torch.channels_last)
        squares = [
            pad_to_square(np.asarray(c))
            if np.asarray(c).shape[0] != np.asarray(c).shape[1]
            else np.asarray(c)
            for c in crops
        ]
        out = np.empty((len(squares), 1280), dtype=np.float32)
        with _torch_threads(threads), torch.inference_mode():
            for start in range(0, len(squares), batch_size):
                x = to_model_input(squares[start : start + batch_size], self.input_size, MEAN, STD)
                f = self._backbone.forward_features(x.contiguous(memory_format=torch.channels_last))
                out[start : start + len(x)] = f.numpy()
        return out


def fit_gate(specimens: np.ndarray, debris: np.ndarray, *, l2: float = 1e-3) -> OutlierLogistic:
    """The logistic model, specimens (rows of ``specimens``) against everything else (``debris``)."""
    return fit_outlier_logistic(specimens, debris, l2=l2)


def gate_out_of_fold_scores(
    features: np.ndarray, is_debris: np.ndarray, groups: np.ndarray, *, n_folds: int = 5, seed: int = 0
) -> np.ndarray:
    """``(n,)`` out-of-fold gate scores: folds are stratified by ``groups`` (the source folder), so
    every folder is spread over the folds; each fold is scored by a gate fitted on the others."""
    from labpipe.classify.rejection import stratified_folds

    x = np.asarray(features, dtype=np.float64)
    d = np.asarray(is_debris, dtype=bool)
    folds = stratified_folds(np.unique(np.asarray(groups), return_inverse=True)[1], n_folds, seed)
    out = np.empty(len(x))
    for f in range(n_folds):
        held = folds == f
        model = fit_gate(x[~held & ~d], x[~held & d])
        out[held] = model.score(x[held])
    return out


def _content_hash(paths: Sequence[Path]) -> str:
    from labpipe.classify.dataset import file_sha256

    return hashlib.sha256("\n".join(sorted(file_sha256(p) for p in paths)).encode()).hexdigest()


def train_gate(
    specimens: Sequence[Path],
    debris: Sequence[Path],
    out_dir: Path,
    *,
    keep: float = DEFAULT_KEEP,
    cache_dir: Path | None = None,
    threads: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a gate on folders of whole specimens and of debris/fragments/background; write ``out_dir``.

    Returns the written ``gate.json`` content. Raises :class:`ConfigError` for an empty side or an
    existing gate without ``overwrite``.
    """
    from labpipe.classify.dataset import image_files
    from labpipe.classify.efficientnet_lite import load_efficientnet_lite0
    from labpipe.classify.features import FeatureCache, FeatureRecipe, extract_features
    from labpipe.classify.imagenet_family import _torch_threads
    from labpipe.classify.trained import backbone_record

    out_dir = Path(out_dir)
    if (out_dir / GATE_CONFIG).exists() and not overwrite:
        raise ConfigError(out_dir, "already holds a gate", "choose another --out, or pass --overwrite")
    if not specimens or not debris:
        raise ConfigError(None, "a gate needs folders of whole specimens and of debris", "pass both kinds")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], given keep {keep}")
    started = time.perf_counter()
    folders = [(Path(f), False) for f in specimens] + [(Path(f), True) for f in debris]
    paths: list[Path] = []
    is_debris: list[bool] = []
    groups: list[int] = []
    summary: dict[str, Any] = {"specimens": {}, "debris": {}}
    for g, (folder, bad) in enumerate(folders):
        files = image_files(folder)
        if not files:
            raise ConfigError(folder, "holds no images", "point at a folder of crops")
        paths += files
        is_debris += [bad] * len(files)
        groups += [g] * len(files)
        summary["debris" if bad else "specimens"][str(folder.resolve())] = len(files)
    with _torch_threads(threads):
        backbone = load_efficientnet_lite0().to(memory_format=torch.channels_last)
        record = backbone_record()
        recipe = FeatureRecipe(backbone_sha256=record["sha256"])
        x = extract_features(
            paths, [0], backbone, recipe, FeatureCache(cache_dir), progress=progress, desc="gate features"
        )[:, 0]
        d = np.array(is_debris)
        oof = gate_out_of_fold_scores(x, d, np.array(groups))
        threshold = select_distance_threshold(oof[~d], keep)
        model = fit_gate(x[~d], x[d])
    per_folder = {}
    for g, (folder, bad) in enumerate(folders):
        sel = np.array(groups) == g
        share = float((oof[sel] > threshold).mean())
        per_folder[str(folder.resolve())] = {
            "kind": "debris" if bad else "specimen",
            "rejected_out_of_fold": round(share, 4),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_rule_arrays(
        out_dir / GATE_WEIGHTS,
        {"weight": model.weight, "bias": np.array([model.bias])},
        {"format": GATE_FORMAT},
    )
    config = {
        "format": GATE_FORMAT,
        "model": "logistic regression on L2-normalised pooled EfficientNet-Lite0 ImageNet features",
        "backbone": record,
        "input_size": recipe.input_size,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "pad_rule": recipe.pad_rule,
        "threshold": threshold,
        "keep": keep,
        "threshold_selection": "out-of-fold score (5 folds, stratified by folder) keeping `keep` "
        "of the whole specimens",
        "out_of_fold": {
            "specimens_kept": round(float((oof[~d] <= threshold).mean()), 4),
            "debris_rejected": round(float((oof[d] > threshold).mean()), 4),
            "per_folder": per_folder,
        },
        "data": {**summary, "content_sha256": _content_hash(paths)},
        "seconds": round(time.perf_counter() - started, 1),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (out_dir / GATE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def load_gate(directory: Path | str) -> SpecimenGate:
    """Read a ``labpipe-gate-v1`` directory; :class:`ModelLoadError` when it is not one, or when the
    installed backbone is not the one the gate was trained on."""
    from labpipe.classify.efficientnet_lite import default_weights_path
    from labpipe.classify.imagenet_family import file_sha256

    directory = Path(directory).expanduser()
    path = directory / GATE_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            path, f"not a gate directory: {exc}", "train one with `labpipe train gate`"
        ) from exc
    if not isinstance(config, dict) or config.get("format") != GATE_FORMAT:
        raise ModelLoadError(path, f"format is not {GATE_FORMAT!r}", "train one with `labpipe train gate`")
    expected = str(config.get("backbone", {}).get("sha256", ""))
    if file_sha256(default_weights_path()) != expected:
        raise ModelLoadError(
            default_weights_path(),
            "the installed backbone is not the one this gate was trained on",
            "re-train the gate",
        )
    try:
        arrays, _ = load_rule_arrays(directory / GATE_WEIGHTS)
    except Exception as exc:  # safetensors raises several kinds for damaged files
        raise ModelLoadError(directory / GATE_WEIGHTS, f"cannot read the gate weights: {exc}") from exc
    return SpecimenGate(
        OutlierLogistic(arrays["weight"], float(arrays["bias"][0])),
        float(config["threshold"]),
        backbone_sha256=expected,
        path=str(directory.resolve()),
        info={"keep": config.get("keep"), "out_of_fold": config.get("out_of_fold")},
        input_size=int(config.get("input_size", 224)),
    )


class GatedClassifier:
    """Any family classifier behind a :class:`SpecimenGate`.

    It is the inner classifier for everything (version, families, threshold; other attributes are
    passed through), except that a crop the gate rejects comes back rejected with the reason
    ``not_a_specimen`` (its best family still named, for review), and :attr:`ood_rule` records the
    gate beside the inner classifier's own out-of-distribution rule. When the inner classifier
    runs the same frozen backbone at the same input size (``classify_with_features``,
    :meth:`SpecimenGate.shares_features_with`), its features are reused instead of computed twice.
    """

    def __init__(self, inner: Any, gate: SpecimenGate) -> None:
        self.inner = inner
        self.gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)

    @property
    def threshold(self) -> Any:
        return getattr(self.inner, "threshold", None)

    @property
    def ood_rule(self) -> dict[str, Any]:
        inner = getattr(self.inner, "ood_rule", None)
        return {**(dict(inner) if isinstance(inner, Mapping) else {}), "gate": self.gate.describe()}

    def __repr__(self) -> str:
        return f"GatedClassifier({self.inner!r}, gate={self.gate.path!r})"

    def classify(self, crops: Sequence[np.ndarray]) -> list[Classification]:
        if len(crops) == 0:
            return []
        shared = getattr(self.inner, "classify_with_features", None)
        if shared is not None and self.gate.shares_features_with(self.inner):
            results, features = shared(crops)
        else:
            results = self.inner.classify(crops)
            features = self.gate.features(
                crops,
                batch_size=getattr(self.inner, "batch_size", 16),
                threads=getattr(self.inner, "threads", 0),
            )
        return self.apply(results, features)

    def apply(self, results: Sequence[Classification], features: np.ndarray) -> list[Classification]:
        """Reject the results whose crop's features the gate finds not to be a whole specimen."""
        scores = self.gate.score(features)
        out = []
        for result, score in zip(results, scores, strict=True):
            if score > self.gate.threshold:
                result = Classification(
                    family=result.family,
                    probability=result.probability,
                    rejected=True,
                    reason=self.gate.reason(float(score)),
                    top=list(result.top),
                    model_version=result.model_version,
                )
            out.append(result)
        return out
