"""Train a family classifier from a folder per family: ``labpipe train classifier``.

Default (frozen backbone): the ImageNet EfficientNet-Lite0 backbone is kept fixed; its pooled
1280-d features of every image (and of ``views`` augmented copies of each training image) are
computed once and cached (:mod:`labpipe.classify.features`), and a small head of two fully
connected layers with dropout (:class:`~labpipe.classify.trained.FamilyHead`, the Cyprus study's
recipe) is trained on them. This takes minutes on a CPU. ``finetune=True`` then trains the whole
network, starting from that head, with fresh augmentations every epoch.

Steps, each recorded in the model directory:

1. stratified 70/10/20 train/validation/test split with a fixed seed
   (:func:`~labpipe.classify.dataset.stratified_split`);
2. class imbalance: class-weighted cross-entropy (:func:`class_weights`, the "balanced" weights
   ``n / (K n_c)`` of King and Zeng, "Logistic Regression in Rare Events Data", Political Analysis
   9(2), 2001) or, with ``balance="sampler"``, balanced sampling of training examples;
3. the epoch with the lowest validation loss is kept (early stopping);
4. cross-fitting: heads trained (at the kept epoch count) on 5 stratified folds of train +
   validation, each scoring the fold it did not see (out-of-fold logits);
5. temperature scaling (Guo et al. 2017) and the rejection threshold chosen for the target accuracy
   of accepted predictions (:func:`~labpipe.classify.calibration.select_threshold`), on the
   validation split or, when it is too small to set them (fewer than ``min_val_images`` images: a
   target of 95 % accepted accuracy cannot be told from 100 % on a dozen images, and one unlucky
   error there pushes the threshold to 0.99), or holds fewer than ``min_val_errors`` errors (a small
   split of easy families often holds none, and the temperature then stays at 1), on the out-of-fold
   logits; :func:`choose_calibration` decides and words the warning the command prints;
6. the out-of-distribution rule (:mod:`labpipe.classify.rejection`), by default the distance to the
   k-th nearest training crop on L2-normalised backbone features (Sun et al. 2022), fitted on train
   + validation (all views); ``k`` is chosen by leave-one-family-out (each family in turn plays the
   unknown one) and the threshold keeps ``ood_keep`` of the out-of-fold in-distribution scores. No
   out-of-distribution image is used. The out-of-fold calls and the leave-one-family-out outcomes
   are recorded as ``count_correction`` (:mod:`labpipe.classify.count_correction`);
7. evaluation on the test split: ``metrics.json`` and the plots.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from tqdm import tqdm

import labpipe
from labpipe.classify.augment import AugmentSpec, augment_square, view_rng
from labpipe.classify.calibration import fit_temperature, negative_log_likelihood, select_threshold, softmax
from labpipe.classify.count_correction import outcome_counts
from labpipe.classify.dataset import (
    DEFAULT_FRACTIONS,
    SPLITS,
    FamilyImages,
    file_sha256,
    image_files,
    load_square,
    scan_family_folders,
    split_counts,
    stratified_split,
)
from labpipe.classify.efficientnet_lite import MEAN, STD, load_efficientnet_lite0
from labpipe.classify.features import TTA_VIEWS, FeatureCache, FeatureRecipe, extract_features, tta_mean
from labpipe.classify.imagenet_family import _torch_threads, to_model_input
from labpipe.classify.ood import OOD_FILE, RULES, energy_score, select_distance_threshold
from labpipe.classify.rejection import (
    RULE_METHODS,
    choose_knn_k,
    fit_rule,
    leave_one_family_out,
    out_of_fold_scores,
    save_fitted_rule,
    stratified_folds,
    strictest_keep,
)
from labpipe.classify.trained import (
    ARCHITECTURE,
    CONFIG_FILE,
    FORMAT,
    INTERPOLATIONS,
    METRICS_FILE,
    SPLIT_FILE,
    WEIGHTS_FILE,
    FamilyHead,
    FamilyNet,
    backbone_record,
    model_identity,
)
from labpipe.errors import ConfigError

__all__ = [
    "CalibrationChoice",
    "TrainOptions",
    "TrainResult",
    "balanced_sample",
    "choose_calibration",
    "class_weights",
    "train_classifier",
    "train_head",
]


@dataclass(frozen=True)
class TrainOptions:
    """Settings of one training run (all recorded in ``config.json``)."""

    name: str = "families"
    """Model name: the part of the version before ``@``."""
    hidden: int = 256
    dropout: float = 0.5
    epochs: int = 60
    """Head epochs (one epoch = every training image, every view)."""
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    views: int = 4
    """Augmented views per training image, besides the unaugmented one."""
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    balance: str = "weights"
    """``weights`` (class-weighted loss) or ``sampler`` (balanced sampling)."""
    seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    target: float = 0.95
    """Accuracy of accepted predictions the threshold is chosen for, on validation."""
    finetune: bool = False
    finetune_epochs: int = 5
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 16
    input_size: int = 320
    """Side of the square the backbone sees, in pixels (training, evaluation and production alike:
    recorded in ``config.json``). 224 is ImageNet's training size; 320 keeps more of a crop's detail
    (cuticle sculpture, setae): on the shared families it rejects more of a left-out family
    (0.50 -> 0.63 rejected), classifies the test split better (top-1 0.951 -> 0.963) and is better
    calibrated (ECE 0.046 -> 0.030), at about twice the compute per crop (README, issue 14)."""
    tta: bool = False
    """Test-time augmentation: every crop is judged on the mean of the backbone features of itself,
    its mirror image and a quarter turn (:data:`labpipe.classify.features.TTA_VIEWS`), by the head and
    by the out-of-distribution rule (whose bank then holds one such mean per training crop); the head
    also learns from the mirrored and turned views. Three forward passes per crop instead of one.
    Off by default: see README, issue 14 (leave-one-family-out 0.50 -> 0.56 on the shared families,
    far from the issue's 0.80, 0.949 of correct test calls kept, three times the inference cost)."""
    ood_keep: float | None = None
    """Share of in-distribution crops (out-of-fold) the out-of-distribution rule keeps; 0: no rule.
    ``None`` (the default): the strictest of :attr:`ood_keeps` whose threshold still keeps
    :attr:`ood_correct_kept` of the correctly classified crops, out of fold on train + validation
    (:func:`labpipe.classify.rejection.strictest_keep`; 0.95 when the split is too small to
    cross-fit). A stricter keep rejects more of an unknown family (leave-one-family-out on the
    shared families at 320 px, five-fold scores: 0.63 at 0.95, 0.81 at 0.90; leave-one-out kNN
    scores, now used: 0.71 at 0.95), and the correct calls it keeps are the measure that matters
    (issue 14: at least 95 %)."""
    ood_keeps: tuple[float, ...] = (0.85, 0.875, 0.9, 0.925, 0.95)
    """Candidates of the automatic choice of :attr:`ood_keep`."""
    ood_correct_kept: float = 0.95
    """Share of correctly classified crops (out of fold) the automatic choice must keep."""
    ood_rule: str = "knn"
    """``knn`` (default), ``mahalanobis``, ``energy``, ``outlier_exposure`` (needs ``outliers``), ``none``."""
    knn_k: int = 0
    """``k`` of the kNN rule; 0: chosen by leave-one-family-out among 1, 5, 10, 20, 50 (2 families: 10)."""
    outliers: tuple[str, ...] = ()
    """Folders of outlier crops (insects the lab does not target) for ``outlier_exposure``."""
    calibration: str = "auto"
    """``validation`` (temperature and threshold on the validation split), ``crossfit`` (on
    out-of-fold logits of train + validation) or ``auto``: cross-fitted when validation holds
    fewer than ``min_val_images`` images or fewer than ``min_val_errors`` errors."""
    min_val_errors: int = 5
    min_val_images: int = 50
    """Fewest validation images a threshold is set on (``auto``); fewer: cross-fitted, with a warning."""
    crossfit_folds: int = 5
    threads: int = 0
    """Torch CPU threads (0: torch's setting)."""

    def __post_init__(self) -> None:
        if self.balance not in ("weights", "sampler"):
            raise ValueError(f"balance must be 'weights' or 'sampler', given balance {self.balance!r}")
        if self.tta and self.finetune:
            raise ValueError("--tta works on frozen backbone features; it cannot be combined with --finetune")
        if self.views < 0 or self.epochs < 1 or self.batch_size < 1 or self.finetune_epochs < 1:
            raise ValueError("views must be >= 0 and epochs, batch sizes >= 1")
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target must be in (0, 1], given target {self.target}")
        if self.ood_keep is not None and not 0.0 <= self.ood_keep <= 1.0:
            raise ValueError(f"ood_keep must be in [0, 1] (0: no rule), given ood_keep {self.ood_keep}")
        if not self.ood_keeps or not all(0.0 < k <= 1.0 for k in self.ood_keeps):
            raise ValueError(f"ood_keeps must be shares in (0, 1], given {self.ood_keeps}")
        if self.ood_rule not in (*RULES, "none"):
            raise ValueError(f"ood_rule must be one of {(*RULES, 'none')}, given ood_rule {self.ood_rule!r}")
        if self.ood_rule == "outlier_exposure" and not self.outliers:
            raise ValueError("ood_rule 'outlier_exposure' needs outlier folders (--outliers)")
        if self.calibration not in ("auto", "validation", "crossfit"):
            raise ValueError(f"calibration must be auto, validation or crossfit; given {self.calibration!r}")
        if self.knn_k < 0 or self.crossfit_folds < 2 or self.min_val_errors < 0 or self.min_val_images < 0:
            raise ValueError(
                "need knn_k >= 0, crossfit_folds >= 2, min_val_errors >= 0 and min_val_images >= 0"
            )
        if not self.name or "@" in self.name or "/" in self.name:
            raise ValueError(f"name must be non-empty without '@' or '/', given name {self.name!r}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fractions"] = list(self.fractions)
        out["outliers"] = list(self.outliers)
        return out


@dataclass(frozen=True)
class CalibrationChoice:
    """Where temperature and threshold are fitted (:func:`choose_calibration`), and why."""

    crossfit: bool
    """On out-of-fold logits of train + validation (else on the validation split)."""
    reason: str
    warning: str | None = None
    """For the person training: the validation split is too small to trust, and what was done."""


def choose_calibration(
    calibration: str,
    val_n: int,
    val_errors: int,
    crossfit_available: bool,
    *,
    min_val_images: int = 50,
    min_val_errors: int = 5,
    target: float = 0.95,
    pool_n: int = 0,
    folds: int = 5,
) -> CalibrationChoice:
    """Fit temperature and threshold on validation or cross-fitted (pure).

    ``auto`` cross-fits when validation holds fewer than ``min_val_images`` images (too few to set a
    threshold for ``target``) or fewer than ``min_val_errors`` errors (too few to fit a temperature).
    A tiny validation split is warned about whatever is chosen; cross-fitting needs out-of-fold
    logits (not available with fine-tuning, or with fewer than ``2 * folds`` images).

    >>> choose_calibration("auto", 18, 6, True, pool_n=180).crossfit
    True
    >>> choose_calibration("auto", 80, 9, True).crossfit
    False
    """
    small = val_n < min_val_images
    few_errors = val_errors < min_val_errors
    size = (
        f"the validation split holds {val_n} images, fewer than {min_val_images}: too few to set a "
        f"threshold for {target:g} accuracy of accepted predictions (one error there moves it to "
        "the most confident wrong prediction)"
    )
    wanted = calibration == "crossfit" or (calibration == "auto" and (small or few_errors))
    if wanted and crossfit_available:
        why = (
            "asked for"
            if calibration == "crossfit"
            else (
                f"validation held {val_n} images (< {min_val_images})"
                if small
                else f"validation held {val_errors} errors (< {min_val_errors})"
            )
        )
        warning = (
            f"{size}; temperature and threshold were chosen by {folds}-fold cross-fitting on the "
            f"{pool_n} train + validation images instead"
            if small
            else None
        )
        return CalibrationChoice(True, f"cross-fitted: {why}", warning)
    if small:
        if calibration == "validation":
            how = "set on it anyway (--calibration validation): expect many correct crops rejected"
        else:
            how = (
                "cross-fitting is not available (fine-tuning, or fewer than "
                f"{2 * folds} images): the threshold is unreliable; add images or use a lower --target"
            )
        return CalibrationChoice(False, "validation split", f"{size}; {how}")
    return CalibrationChoice(False, "validation split")


@dataclass
class TrainResult:
    directory: Path
    version: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    seconds: dict[str, float]


# --------------------------------------------------------------------------------------------------
# Pure pieces


def class_weights(labels: npt.ArrayLike, n_classes: int) -> np.ndarray:
    """ "Balanced" class weights ``n / (K * n_c)`` (King and Zeng 2001; scikit-learn's ``balanced``).

    Every class then contributes the same total weight to the loss. Classes absent from ``labels``
    get weight 0.

    Example
    -------
    >>> class_weights([0, 0, 0, 1], 2).tolist()
    [0.6666666666666666, 2.0]
    """
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if len(counts) > n_classes:
        raise ValueError(f"labels reach {len(counts) - 1}, but n_classes is {n_classes}")
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


def balanced_sample(labels: npt.ArrayLike, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices drawn with replacement so that every class is equally likely.

    Example
    -------
    >>> idx = balanced_sample([0] * 90 + [1] * 10, 10_000, np.random.default_rng(0))
    >>> bool(0.45 < (np.array([0] * 90 + [1] * 10)[idx] == 1).mean() < 0.55)
    True
    """
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y)
    p = 1.0 / counts[y]
    return rng.choice(len(y), size=size, replace=True, p=p / p.sum())


def train_head(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    n_classes: int,
    options: TrainOptions,
    *,
    progress: bool = True,
    select_best: bool = True,
) -> tuple[FamilyHead, list[dict[str, float]]]:
    """Train a :class:`FamilyHead` on feature vectors; keep the epoch with the lowest validation loss
    (``select_best=False``: the last epoch, for heads whose validation rows must stay unseen).

    Parameters
    ----------
    train_x:
        ``(N, V, D)`` features of ``N`` training images in ``V`` views (or ``(N, D)``).
    train_y:
        ``(N,)`` labels.
    val_x, val_y:
        ``(M, D)`` unaugmented validation features and labels (model selection only).

    Returns
    -------
    The head (eval mode) and the per-epoch history (train loss, validation loss and accuracy).
    """
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    x = train_x if train_x.ndim == 3 else train_x[:, None, :]
    n, v, d = x.shape
    flat_x = torch.from_numpy(np.ascontiguousarray(x.reshape(n * v, d), dtype=np.float32))
    flat_y_np = np.repeat(np.asarray(train_y, dtype=np.int64), v)
    flat_y = torch.from_numpy(flat_y_np)
    vx = torch.from_numpy(np.ascontiguousarray(val_x, dtype=np.float32))
    vy = torch.from_numpy(np.asarray(val_y, dtype=np.int64))
    weight = None
    if options.balance == "weights":
        weight = torch.from_numpy(class_weights(flat_y_np, n_classes).astype(np.float32))
    head = FamilyHead(n_classes, hidden=options.hidden, dropout=options.dropout, in_features=d)
    optimiser = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=options.epochs)
    best_loss, best_state = math.inf, copy.deepcopy(head.state_dict())
    history: list[dict[str, float]] = []
    bar = tqdm(range(options.epochs), desc="train head", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        if options.balance == "sampler":
            order = balanced_sample(flat_y_np, len(flat_y_np), rng)
        else:
            order = rng.permutation(len(flat_y_np))
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            idx = torch.from_numpy(order[start : start + options.batch_size])
            loss = F.cross_entropy(head(flat_x[idx]), flat_y[idx], weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        schedule.step()
        head.eval()
        with torch.no_grad():
            val_logits = head(vx)
            val_loss = float(F.cross_entropy(val_logits, vy, weight=weight)) if len(vy) else math.nan
            val_acc = float((val_logits.argmax(1) == vy).float().mean()) if len(vy) else math.nan
        history.append(
            {"epoch": epoch + 1, "train_loss": total / len(order), "val_loss": val_loss, "val_acc": val_acc}
        )
        bar.set_postfix(
            loss=f"{total / len(order):.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}"
        )
        if select_best and val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(head.state_dict())
    if select_best:
        head.load_state_dict(best_state)
    return head.eval(), history


# --------------------------------------------------------------------------------------------------
# Orchestration


def _data_summary(data: FamilyImages, hashes: list[str]) -> dict[str, Any]:
    folders: dict[str, Any] = {}
    for i, family in enumerate(data.families):
        members = [item for item in data.items if item.label == i]
        folder = members[0].path.parent if members else data.root / family
        folders[family] = {"folder": str(folder.resolve()), "images": len(members)}
    return {
        "root": str(data.root.resolve()),
        "families": folders,
        "images": len(data.items),
        "content_sha256": hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest(),
    }


def _split_manifest(
    data: FamilyImages, split: np.ndarray, hashes: list[str]
) -> dict[str, list[dict[str, str]]]:
    manifest: dict[str, list[dict[str, str]]] = {name: [] for name in SPLITS}
    for item, which, digest in zip(data.items, split, hashes, strict=True):
        manifest[str(which)].append(
            {"family": data.families[item.label], "file": item.path.name, "sha256": digest}
        )
    return manifest


def _logits(head: FamilyHead, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return (
            head.eval()(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).double().numpy()
        )


def _net_logits(
    net: FamilyNet, paths: list[Path], batch_size: int, progress: bool, desc: str, size: int
) -> np.ndarray:
    return _net_features_and_logits(net, paths, batch_size, progress, desc, size)[1]


def _net_features_and_logits(
    net: FamilyNet, paths: list[Path], batch_size: int, progress: bool, desc: str, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features ``(N, D)`` and logits ``(N, K)`` of unaugmented crops seen at
    ``size`` px, in one pass."""
    net.eval()
    feats, logits = [], []
    with torch.inference_mode(), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            x = to_model_input([load_square(p) for p in chunk], size, MEAN, STD)
            f = net.backbone.forward_features(x.contiguous(memory_format=torch.channels_last))
            feats.append(f.double().numpy())
            logits.append(net.head(f).double().numpy())
            bar.update(len(chunk))
    if not feats:
        return np.empty((0, net.head.fc2.in_features)), np.empty((0, net.head.fc2.out_features))
    return np.concatenate(feats), np.concatenate(logits)


def _freeze_batchnorm(net: FamilyNet) -> None:
    """Batch-norm layers keep their ImageNet statistics while fine-tuning (small CPU batches)."""
    for module in net.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def finetune_network(
    net: FamilyNet,
    train_paths: list[Path],
    train_y: np.ndarray,
    val_paths: list[Path],
    val_y: np.ndarray,
    options: TrainOptions,
    *,
    progress: bool = True,
    loader: Callable[[Path], np.ndarray] = load_square,
) -> list[dict[str, float]]:
    """Train every layer (batch-norm statistics frozen), fresh augmentations each epoch; keep the
    epoch with the lowest validation loss. ``net``'s head should already be trained (frozen stage)."""
    n_classes = net.head.fc2.out_features
    weight = None
    if options.balance == "weights":
        weight = torch.from_numpy(class_weights(train_y, n_classes).astype(np.float32))
    optimiser = torch.optim.AdamW(
        [
            {"params": net.backbone.parameters(), "lr": options.finetune_lr},
            {"params": net.head.parameters(), "lr": options.finetune_lr * 10},
        ],
        weight_decay=options.weight_decay,
    )
    rng = np.random.default_rng(options.seed + 1)
    best_loss, best_state = math.inf, copy.deepcopy(net.state_dict())
    history: list[dict[str, float]] = []
    for epoch in range(options.finetune_epochs):
        net.train()
        _freeze_batchnorm(net)
        if options.balance == "sampler":
            order = balanced_sample(train_y, len(train_y), rng)
        else:
            order = rng.permutation(len(train_y))
        total = 0.0
        desc = f"finetune {epoch + 1}/{options.finetune_epochs}"
        with tqdm(total=len(order), desc=desc, unit="img", disable=not progress) as bar:
            for start in range(0, len(order), options.finetune_batch_size):
                idx = order[start : start + options.finetune_batch_size]
                views = [
                    augment_square(
                        loader(train_paths[i]),
                        view_rng(str(train_paths[i]), 1000 + epoch, options.seed),
                        options.augment,
                    )
                    for i in idx
                ]
                x = to_model_input(views, options.input_size, MEAN, STD)
                x = x.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(net(x), torch.from_numpy(train_y[idx]), weight=weight)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
                bar.update(len(idx))
        val_logits = torch.from_numpy(
            _net_logits(net, val_paths, options.finetune_batch_size, False, "val", options.input_size)
        )
        vy = torch.from_numpy(val_y)
        val_loss = float(F.cross_entropy(val_logits.float(), vy, weight=weight))
        val_acc = float((val_logits.argmax(1) == vy).float().mean())
        history.append(
            {"epoch": epoch + 1, "train_loss": total / len(order), "val_loss": val_loss, "val_acc": val_acc}
        )
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    return history


def train_classifier(
    data_dir: Path,
    out_dir: Path,
    options: TrainOptions | None = None,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train, calibrate, evaluate and write a ``labpipe-classifier-v1`` model directory.

    Parameters
    ----------
    data_dir:
        One folder per family (``DATA_DIR/<Family>/*.jpg``).
    out_dir:
        The model directory to write (must not hold a model unless ``overwrite``).
    options:
        :class:`TrainOptions`.
    cache_dir:
        Where backbone features are cached (``None``: not cached).

    Raises
    ------
    ConfigError
        Fewer than two families, a family with fewer than 3 images, or an existing model at ``out_dir``.
    """
    from labpipe.evaluation.classifier import classifier_report, write_report_files

    options = options or TrainOptions()
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).exists() and not overwrite:
        raise ConfigError(out_dir, "already holds a model", "choose another --out, or pass --overwrite")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with _torch_threads(options.threads):
        data = scan_family_folders(data_dir)
        if len(data.families) < 2:
            raise ConfigError(
                data_dir, f"only one family folder ({data.families[0]})", "a classifier needs two or more"
            )
        labels = data.labels
        try:
            split = stratified_split(labels, options.fractions, options.seed, names=data.families)
        except ValueError as exc:
            raise ConfigError(data_dir, str(exc), "every family needs at least 3 images") from exc
        hashes = [file_sha256(p) for p in data.paths]
        paths = np.array(data.paths, dtype=object)
        idx = {name: np.flatnonzero(split == name) for name in SPLITS}

        # 1. Frozen backbone features, cached.
        t0 = time.perf_counter()
        backbone = load_efficientnet_lite0().to(memory_format=torch.channels_last)
        record = backbone_record()
        recipe = FeatureRecipe(
            backbone_sha256=record["sha256"],
            input_size=options.input_size,
            augment=options.augment,
            seed=options.seed,
        )
        cache = FeatureCache(cache_dir)
        views = list(range(options.views + 1))
        feats = {
            "train": extract_features(
                list(paths[idx["train"]]),
                views,
                backbone,
                recipe,
                cache,
                progress=progress,
                desc="features train",
            ),
            "val_views": extract_features(
                list(paths[idx["val"]]),
                views,
                backbone,
                recipe,
                cache,
                progress=progress,
                desc="features val",
            ),
            "test": extract_features(
                list(paths[idx["test"]]),
                [0],
                backbone,
                recipe,
                cache,
                progress=progress,
                desc="features test",
            )[:, 0],
        }
        feats["val"] = feats["val_views"][:, 0]
        tta: dict[str, np.ndarray] = {}
        if options.tta and not options.finetune:
            for name in SPLITS:
                tta[name] = extract_features(
                    list(paths[idx[name]]),
                    list(TTA_VIEWS),
                    backbone,
                    recipe,
                    cache,
                    progress=progress,
                    desc=f"features {name} (orientations)",
                )
            # The head also learns the mirrored and turned views; it judges their mean.
            feats["train"] = np.concatenate([feats["train"], tta["train"][:, 1:]], axis=1)
            feats["val"], feats["test"] = tta_mean(tta["val"]), tta_mean(tta["test"])
        outlier_paths: list[Path] = []
        for folder in options.outliers:
            outlier_paths += image_files(Path(folder))
        outlier_feats = (
            extract_features(
                outlier_paths, [0], backbone, recipe, cache, progress=progress, desc="features outliers"
            )[:, 0]
            if outlier_paths
            else None
        )
        seconds["features"] = time.perf_counter() - t0

        # 2. Head on frozen features.
        t0 = time.perf_counter()
        y = {name: labels[idx[name]] for name in SPLITS}
        head, history = train_head(
            feats["train"], y["train"], feats["val"], y["val"], len(data.families), options, progress=progress
        )
        seconds["head"] = time.perf_counter() - t0
        net = FamilyNet(backbone, head)

        # 3. Optional fine-tuning of the whole network.
        finetune_history: list[dict[str, float]] = []
        if options.finetune:
            t0 = time.perf_counter()
            finetune_history = finetune_network(
                net,
                list(paths[idx["train"]]),
                y["train"],
                list(paths[idx["val"]]),
                y["val"],
                options,
                progress=progress,
            )
            # Features of the fine-tuned backbone (unaugmented) for the out-of-distribution rule.
            size = options.input_size
            train_feats, _ = _net_features_and_logits(
                net, list(paths[idx["train"]]), 16, progress, "train", size
            )
            feats["train"] = train_feats[:, None, :]
            feats["val"], val_logits = _net_features_and_logits(
                net, list(paths[idx["val"]]), 16, progress, "val", size
            )
            feats["test"], test_logits = _net_features_and_logits(
                net, list(paths[idx["test"]]), 16, progress, "test", size
            )
            seconds["finetune"] = time.perf_counter() - t0
        else:
            val_logits = _logits(head, feats["val"])
            test_logits = _logits(head, feats["test"])

        # 4. Cross-fitting: heads trained on folds of train + validation, each scoring its held-out fold.
        t0 = time.perf_counter()
        n_classes = len(data.families)
        best_epoch = (
            max(1, min(options.epochs, int(np.argmin([h["val_loss"] for h in history])) + 1))
            if history
            else options.epochs
        )
        fold_options = dataclasses.replace(options, epochs=best_epoch)

        def fit_head(x: np.ndarray, yy: np.ndarray, k: int) -> Callable[[np.ndarray], np.ndarray]:
            fold_head, _ = train_head(x, yy, x[:, 0], yy, k, fold_options, progress=False, select_best=False)
            return lambda f: _logits(fold_head, f)

        pool_x = None
        if not options.finetune:
            val_views = feats["val_views"]
            if tta:
                val_views = np.concatenate([val_views, tta["val"][:, 1:]], axis=1)
            pool_x = np.concatenate([feats["train"], val_views])
        pool_y = np.concatenate([y["train"], y["val"]])
        # What each pooled crop is judged on: its own features, or their mean over orientations.
        pool_q = (
            np.concatenate([tta_mean(tta["train"]), tta_mean(tta["val"])])
            if tta
            else (pool_x[:, 0] if pool_x is not None else None)
        )
        oof_logits = None
        if pool_x is not None and len(pool_y) >= 2 * options.crossfit_folds:
            folds = stratified_folds(pool_y, options.crossfit_folds, options.seed)
            oof_logits = np.empty((len(pool_y), n_classes))
            for f in range(options.crossfit_folds):
                held = folds == f
                oof_logits[held] = fit_head(pool_x[~held], pool_y[~held], n_classes)(pool_q[held])
        seconds["crossfit"] = time.perf_counter() - t0

        # 5. Calibration and threshold: on validation, or cross-fitted when validation has few errors.
        val_errors = int((val_logits.argmax(axis=1) != y["val"]).sum()) if len(y["val"]) else 0
        calibration = choose_calibration(
            options.calibration,
            len(y["val"]),
            val_errors,
            oof_logits is not None,
            min_val_images=options.min_val_images,
            min_val_errors=options.min_val_errors,
            target=options.target,
            pool_n=len(pool_y),
            folds=options.crossfit_folds,
        )
        crossfit = calibration.crossfit
        cal_logits, cal_y = (oof_logits, pool_y) if crossfit else (val_logits, y["val"])
        temperature = fit_temperature(cal_logits, cal_y)
        temperature_fit = {
            "method": (
                f"temperature scaling (Guo et al. 2017), NLL on out-of-fold logits of train + validation "
                f"({options.crossfit_folds} folds): {calibration.reason}"
                if crossfit
                else "temperature scaling, NLL on validation (Guo et al. 2017)"
            ),
            "crossfit": crossfit,
            "warning": calibration.warning,
            "n": len(cal_y),
            "errors": int((cal_logits.argmax(axis=1) != cal_y).sum()) if len(cal_y) else 0,
            "val_n": len(y["val"]),
            "val_errors": val_errors,
            "nll_before": negative_log_likelihood(cal_logits, cal_y, 1.0),
            "nll_after": negative_log_likelihood(cal_logits, cal_y, temperature),
            "separated": bool(np.all(cal_logits.argmax(axis=1) == cal_y)),
        }
        cal_probs = softmax(cal_logits, temperature)
        choice = select_threshold(cal_probs.max(axis=1), cal_probs.argmax(axis=1) == cal_y, options.target)

        # 6. Out-of-distribution rule, its free parameter and threshold chosen without any OOD data.
        t0 = time.perf_counter()
        ood_config: dict[str, Any] | None = None
        fitted = None
        test_distances = None
        count_correction: dict[str, Any] | None = None
        rule = options.ood_rule
        if rule != "none" and options.ood_keep != 0 and len(y["val"]):
            if options.finetune or pool_x is None:
                # The fine-tuned backbone's features: one unaugmented view per crop.
                pool_x = np.concatenate([feats["train"], feats["val"][:, None, :]])
            elif tta:
                # The rule's bank: one mean over orientations per crop, judged against the same.
                assert pool_q is not None
                pool_x = pool_q[:, None, :]

            scores_by_k: dict[int | None, np.ndarray] = {}

            def rule_at(keep: float) -> tuple[dict[str, Any], dict[str, Any] | None, np.ndarray]:
                """The rule's settings and out-of-fold scores when it is to keep ``keep``."""
                kwargs: dict[str, Any] = {}
                k_choice: dict[str, Any] | None = None
                if rule == "knn":
                    if options.knn_k:
                        kwargs["k"] = options.knn_k
                    elif n_classes >= 3:
                        k, means = choose_knn_k(pool_x, pool_y, n_classes, keep, seed=options.seed)
                        kwargs["k"] = k
                        k_choice = {
                            "candidates": sorted(means),
                            "left_out_family_rejected": {str(a): round(b, 4) for a, b in means.items()},
                        }
                    else:
                        smallest = int(np.bincount(pool_y).min()) * pool_x.shape[1]
                        kwargs["k"] = min(10, max(1, smallest // 2))
                        k_choice = {
                            "note": "two families: no family to leave out; k = 10 (at most half a family)"
                        }
                elif rule == "outlier_exposure":
                    kwargs["outliers"] = outlier_feats
                elif rule == "energy":
                    kwargs["fit_head"] = fit_head
                if rule == "energy":
                    if oof_logits is None:
                        raise ConfigError(
                            data_dir, "the energy rule needs cross-fitted logits", "use more images"
                        )
                    return kwargs, k_choice, energy_score(oof_logits)
                # only k depends on the keep: other settings score alike for every candidate keep
                key = kwargs.get("k")
                if key not in scores_by_k:
                    scores_by_k[key] = out_of_fold_scores(
                        rule,
                        pool_x,
                        pool_y,
                        n_classes,
                        n_folds=options.crossfit_folds,
                        seed=options.seed,
                        **kwargs,
                    )
                return kwargs, k_choice, scores_by_k[key]

            keep_choice: dict[str, Any] | None = None
            if options.ood_keep is not None:
                keep = options.ood_keep
                kwargs, k_choice, oof_scores = rule_at(keep)
            elif oof_logits is None:
                keep = 0.95
                kwargs, k_choice, oof_scores = rule_at(keep)
                keep_choice = {"note": "too few crops to cross-fit the head: 0.95"}
            else:
                correct = oof_logits.argmax(axis=1) == pool_y
                kept_correct: dict[float, float] = {}
                tried: dict[float, tuple[dict[str, Any], dict[str, Any] | None, np.ndarray]] = {}
                for candidate in sorted(options.ood_keeps):
                    tried[candidate] = rule_at(candidate)
                    t = select_distance_threshold(tried[candidate][2], candidate)
                    kept_correct[candidate] = float((tried[candidate][2][correct] <= t).mean())
                    if kept_correct[candidate] >= options.ood_correct_kept:
                        break
                keep, reached = strictest_keep(kept_correct, options.ood_correct_kept)
                kwargs, k_choice, oof_scores = tried[keep]
                keep_choice = {
                    "rule": f"the strictest keep whose threshold keeps at least {options.ood_correct_kept} "
                    "of the correctly classified crops, out of fold on train + validation",
                    "correct_kept": {str(a): round(b, 4) for a, b in kept_correct.items()},
                    "reached": reached,
                }
            if rule == "energy":
                fitted = fit_rule(
                    "energy", pool_x, pool_y, n_classes, fit_head=lambda *_: lambda f: _logits(head, f)
                )
            else:
                fitted = fit_rule(rule, pool_x, pool_y, n_classes, **kwargs)
            distance_threshold = select_distance_threshold(oof_scores, keep)
            lofo = None
            if n_classes >= 3:
                lofo = leave_one_family_out(
                    rule, pool_x, pool_y, n_classes, [keep],
                    n_folds=options.crossfit_folds, seed=options.seed, head_fitter=fit_head, **kwargs,
                )  # fmt: skip
            test_distances = fitted.score(feats["test"], test_logits)
            ood_config = {
                "rule": rule,
                "method": RULE_METHODS[rule],
                "file": OOD_FILE if rule != "energy" else None,
                "threshold": distance_threshold,
                "keep": keep,
                **({"keep_selection": keep_choice} if keep_choice else {}),
                "threshold_selection": "out-of-fold score of train + validation crops "
                f"({options.crossfit_folds} folds) "
                f"keeping {keep} of them; no out-of-distribution images used",
                "fitted_on": int(pool_x.shape[0] * pool_x.shape[1]),
                "oof_score_quantiles": {
                    q: float(np.quantile(oof_scores, float(q))) for q in ("0.5", "0.9", "0.975", "1.0")
                },
                **({"k": int(kwargs["k"]), "k_selection": k_choice} if rule == "knn" else {}),
                **({"temperature": 1.0} if rule == "energy" else {}),
                **(
                    {"outliers": {"folders": list(options.outliers), "images": len(outlier_paths)}}
                    if rule == "outlier_exposure"
                    else {}
                ),
            }
            if fitted.gaussians is not None:
                ood_config["shrinkage"] = fitted.gaussians.shrinkage
            if lofo is not None:
                ood_config["leave_one_family_out"] = {
                    "rejected": {
                        f: round(r, 4) for f, r in zip(data.families, lofo["rejected"][keep], strict=True)
                    },
                    "mean_rejected": round(lofo["mean"][keep], 4),
                    "kept": round(lofo["kept"][keep], 4),
                }
            if oof_logits is not None:
                oof_probs = softmax(oof_logits, temperature)
                rejected = (oof_probs.max(axis=1) < choice.threshold) | (oof_scores > distance_threshold)
                count_correction = {
                    "families": list(data.families),
                    "confusion": outcome_counts(
                        pool_y, oof_probs.argmax(axis=1), rejected, n_classes
                    ).tolist(),
                    "confusion_source": "out-of-fold calls on train + validation, at the model's thresholds",
                    "ood": lofo["outcomes"].tolist() if lofo is not None else None,
                    "ood_source": "leave-one-family-out: each family as the unknown, judged by a head "
                    "and rule fitted on the others"
                    if lofo is not None
                    else None,
                }
        seconds["ood"] = time.perf_counter() - t0

        # 7. Write the directory.
        out_dir.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save

        full = options.finetune
        # save() + write_bytes rather than save_file(), which creates the file readable by its owner only.
        (out_dir / WEIGHTS_FILE).write_bytes(save(net.trainable_state(full), metadata={"format": FORMAT}))
        if (
            not (fitted is not None and save_fitted_rule(fitted, out_dir / OOD_FILE))
            and (out_dir / OOD_FILE).exists()
        ):
            (out_dir / OOD_FILE).unlink()
        weights: dict[str, Any] = {"file": WEIGHTS_FILE, "contains": "full" if full else "head"}
        if not full:
            weights["backbone"] = record
        seconds["total"] = time.perf_counter() - started
        config: dict[str, Any] = {
            "format": FORMAT,
            "name": options.name,
            "architecture": ARCHITECTURE,
            "head": {
                "type": "mlp",
                "in_features": int(feats["train"].shape[-1]),
                "hidden": options.hidden,
                "dropout": options.dropout,
            },
            "labels": list(data.families),
            "input_size": options.input_size,
            "mean": list(MEAN),
            "std": list(STD),
            "pad_rule": "border_mean",
            "interpolation": INTERPOLATIONS[0],
            "temperature": temperature,
            "temperature_fit": temperature_fit,
            "threshold": choice.threshold,
            "threshold_target": options.target,
            "threshold_selection": choice.as_dict(),
            "ood": ood_config,
            **(
                {
                    "tta": {
                        "views": list(TTA_VIEWS),
                        "method": "mean of the pooled backbone features of the crop, its mirror image "
                        "and a quarter turn (head and out-of-distribution rule)",
                    }
                }
                if tta
                else {}
            ),
            "count_correction": count_correction,
            "weights": weights,
            "split": {
                "seed": options.seed,
                "fractions": list(options.fractions),
                "counts": split_counts(labels, split, data.families),
                "file": SPLIT_FILE,
            },
            "training": {
                "mode": "finetune" if full else "frozen-backbone head",
                "options": options.as_dict(),
                "history": history,
                "finetune_history": finetune_history,
                "feature_cache": {
                    "dir": str(cache_dir) if cache_dir else None,
                    "hits": cache.hits,
                    "misses": cache.misses,
                },
                "seconds": {k: round(v, 2) for k, v in seconds.items()},
                "threads": torch.get_num_threads(),
            },
            "data": _data_summary(data, hashes),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "labpipe_version": labpipe.__version__,
        }
        (out_dir / SPLIT_FILE).write_text(
            json.dumps(_split_manifest(data, split, hashes), indent=1) + "\n", encoding="utf-8"
        )
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        identity = model_identity(out_dir)

        # 8. Test-split evaluation.
        report = classifier_report(
            test_logits,
            y["test"],
            data.families,
            temperature,
            choice.threshold,
            target=options.target,
            distances=test_distances,
            distance_threshold=ood_config["threshold"] if ood_config else None,
        )
        report.summary = {"model": {"version": identity.version}, "data": {"split": "test"}, **report.summary}
        write_report_files(report, out_dir, title=f"{identity.version}\ntest split", json_name=METRICS_FILE)
    return TrainResult(out_dir, identity.version, config, report.as_dict(), seconds)
