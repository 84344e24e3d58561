"""Train a DETR-family specimen detector from COCO annotations (``labpipe train detector``).

- Starts from a local checkpoint (``init``: any DETR-family model directory; its class head is
  replaced by a one-class ``specimen`` head when it has other classes), or builds a new small
  Conditional DETR whose EfficientNet-Lite0 backbone starts from the offline ImageNet weights
  (:func:`labpipe.detect.detr.build_detr`).
- A lab's export (``labpipe export coco``) trains on its ``specimen`` boxes only: ``debris`` boxes
  stay background (negatives), and ignore regions (``iscrowd``, ``attributes.uncertain``) are
  blanked with the image's border colour, so they teach neither way.
- Images are read once at the working scale (``um_per_px``, from each image's ``um_per_px`` in the
  COCO file or its resolution tags; images of unknown scale are used as they are) and training
  tiles are cut at random from them, with a random rescale, flips, quarter turns and a brightness /
  contrast jitter; boxes are clipped to each tile and boxes mostly outside it are dropped
  (:func:`labpipe.detect.detr_data.random_tile`).
- Defaults follow the BIOSCAN-5M cropping model (a DETR fine-tuned with AdamW, learning rate 1e-4,
  weight decay 1e-4, batch 8, 10 epochs, one rate for every layer; DETR's 1e-5 for the backbone
  is an option). The stem and first two backbone stages stay at their ImageNet weights.
  Gradients are clipped at norm 0.1 (DETR); the rate drops tenfold for the last fifth of the epochs
  (or of ``max_minutes``, when the time budget ends training first).
- After every epoch the tiled detector (the same code as inference) runs on the validation images;
  the checkpoint with the best AP50 is kept in the output directory with its preprocessor config,
  ``labpipe_detector.json`` and a model card (``README.md``: data, settings, metrics).
- :func:`pseudo_label` annotates unlabelled plates with the classical detector, to bootstrap.

References
----------
.. [1] N. Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020.
.. [2] D. Meng et al., "Conditional DETR for Fast Training Convergence", ICCV 2021.
.. [3] Z. Gharaee et al., "BIOSCAN-5M: A Multimodal Dataset for Insect Biodiversity", NeurIPS 2024
   Datasets and Benchmarks (the cropping model: DETR fine-tuned with the settings above).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from labpipe.detect.detr import (
    MODEL_INFO_FILE,
    PREPROCESSOR_FILE,
    DetrDetector,
    DetrModelInfo,
    Preprocessing,
    build_detr,
    load_detr_model,
    resolve_device,
    save_detr_model,
)
from labpipe.detect.detr_data import (
    CocoImage,
    blank_regions,
    coco_document,
    load_work_image,
    padding_colour,
    random_tile,
    read_coco_set,
    write_coco_document,
)
from labpipe.evaluation.detector import coco_ap
from labpipe.logs import get_logger
from labpipe.metrics.detection import match_detections

__all__ = [
    "DetrTrainOptions",
    "DetrTrainResult",
    "pseudo_label",
    "result_summary",
    "train_detector",
    "write_model_card",
]

log = get_logger(__name__)

_FROZEN_PREFIXES = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.")
"""Backbone layers kept at their ImageNet weights (stride 2-4: edges and colours), as DETR freezes
ResNet's stem and first stage; also the costly high-resolution part of the backward pass."""


@dataclass
class DetrTrainOptions:
    """Settings of one training run (all written to the model card)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4
    lr_backbone: float = 1e-4
    """Backbone learning rate (BIOSCAN: one rate for all; DETR used 1e-5)."""
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    tile_size: int = 384
    tile_overlap: int = 128
    um_per_px: float | None = 40.0
    """Working scale (micrometres per pixel); None: images are used at their own scale."""
    tiles_per_image: int = 0
    """Random tiles per image and epoch; 0: enough to cover the image once on average."""
    scale_jitter: tuple[float, float] = (0.75, 1.33)
    val_fraction: float = 0.1
    """Share of the images held out for validation when no validation set is given; 0: none (the
    last checkpoint is kept: for a time budget too short to validate, e.g. a few large frames)."""
    architecture: str = "rt-detr"
    """A new model's architecture (:data:`labpipe.detect.detr.ARCHITECTURES`); ignored with ``init``."""
    num_queries: int = 100
    d_model: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_dim: int = 512
    backbone_stage: str = "stage4"
    imagenet_backbone: bool = True
    freeze_early_backbone: bool = True
    init: str | None = None
    """A local model directory to fine-tune; None: a new model (see :func:`build_detr`)."""
    val_score_threshold: float = 0.5
    """Score threshold for validation precision/recall/F1 (AP uses every detection above 0.05)."""
    max_minutes: float = 0.0
    """Time budget: an epoch stops early enough for its validation (as long as the last one took)
    to end within it; 0: no limit."""
    seed: int = 0
    threads: int = 0
    device: str = "auto"


@dataclass
class DetrTrainResult:
    model_dir: Path
    best_epoch: int
    best: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    n_train_images: int = 0
    n_val_images: int = 0


@dataclass
class _WorkImage:
    name: str
    image: np.ndarray
    boxes: np.ndarray
    """``(N, 4)`` at the working scale."""


def _load_set(
    entries: list[CocoImage], images_dir: Path, um_per_px: float | None, progress: bool
) -> list[_WorkImage]:
    from labpipe.imaging import open_image

    out: list[_WorkImage] = []
    for entry in tqdm(entries, desc="read images", disable=not progress, unit="img"):
        path = Path(images_dir) / entry.file_name
        scale = entry.um_per_px
        if scale is None:
            with open_image(path) as plate:
                scale = plate.um_per_px
        factor = um_per_px / scale if (um_per_px and scale) else 1.0
        image = load_work_image(path, factor)
        fx = entry.width / image.shape[1]
        fy = entry.height / image.shape[0]
        boxes = np.asarray(entry.boxes, dtype=np.float64).reshape(-1, 4) / np.array([fx, fy, fx, fy])
        if entry.ignore:
            ignore = np.asarray(entry.ignore, dtype=np.float64).reshape(-1, 4) / np.array([fx, fy, fx, fy])
            image = blank_regions(image, ignore, padding_colour(image))
        out.append(_WorkImage(entry.file_name, image, boxes))
    return out


def _jitter(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast jitter (+-15 %) of a uint8 tile."""
    x = tile.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.85, 1.15) + mean * rng.uniform(0.85, 1.15)
    return np.clip(x, 0, 255).astype(np.uint8)


def _rot90(tile: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate a square tile by ``k`` quarter turns counter-clockwise, boxes with it."""
    size = tile.shape[0]
    b = boxes.copy()
    for _ in range(k % 4):
        tile = np.rot90(tile)
        # (x, y, w, h) -> (y, size - x - w, h, w)
        b = np.stack([b[:, 1], size - b[:, 0] - b[:, 2], b[:, 3], b[:, 2]], axis=1) if len(b) else b
    return np.ascontiguousarray(tile), b


def _labels(boxes: np.ndarray, tile: int) -> dict[str, torch.Tensor]:
    b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    cxcywh = torch.stack(
        [(b[:, 0] + b[:, 2] / 2) / tile, (b[:, 1] + b[:, 3] / 2) / tile, b[:, 2] / tile, b[:, 3] / tile], 1
    )
    return {"class_labels": torch.zeros(len(b), dtype=torch.long), "boxes": cxcywh.clamp(0, 1)}


def _validate(detector: DetrDetector, images: list[_WorkImage], score_threshold: float) -> dict[str, float]:
    """AP50, AP50:95 on every detection above 0.05; P/R/F1 and count error at ``score_threshold``."""
    detector.model.eval()
    saved = detector.score_threshold
    detector.score_threshold = 0.05
    detector.warn_crowded = False
    dets, truth = [], []
    tp = n_det = n_truth = 0
    count_err = []
    try:
        for item in images:
            found = detector.detect_work_image(item.image)
            boxes = [d.as_xywh() for d in found]
            scores = [d.score for d in found]
            dets.append((boxes, scores))
            truth.append(item.boxes.tolist())
            keep = [i for i, s in enumerate(scores) if s >= score_threshold]
            result = match_detections(
                [boxes[i] for i in keep], item.boxes.tolist(), [scores[i] for i in keep]
            )
            tp += result.true_positives
            n_det += len(keep)
            n_truth += len(item.boxes)
            count_err.append(abs(len(keep) - len(item.boxes)))
    finally:
        detector.score_threshold = saved
        detector.warn_crowded = True
    ap50, ap = coco_ap(dets, truth)
    p = tp / n_det if n_det else 1.0
    r = tp / n_truth if n_truth else 1.0
    return {
        "ap50": round(ap50, 4) if ap50 == ap50 else float("nan"),
        "ap50_95": round(ap, 4) if ap == ap else float("nan"),
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
        "mean_abs_count_error": round(float(np.mean(count_err)), 3) if count_err else float("nan"),
    }


def _new_or_init_model(options: DetrTrainOptions) -> tuple[Any, DetrModelInfo, Preprocessing]:
    if options.init:
        model, info, prep = load_detr_model(Path(options.init), "cpu")
        if int(model.config.num_labels) != 1:
            from transformers import AutoModelForObjectDetection

            model = AutoModelForObjectDetection.from_pretrained(
                options.init,
                local_files_only=True,
                num_labels=1,
                id2label={0: "specimen"},
                label2id={"specimen": 0},
                ignore_mismatched_sizes=True,
            )
        return model, info, prep
    model = build_detr(
        architecture=options.architecture,
        num_queries=options.num_queries,
        d_model=options.d_model,
        encoder_layers=options.encoder_layers,
        decoder_layers=options.decoder_layers,
        ffn_dim=options.ffn_dim,
        backbone_stage=options.backbone_stage,
        imagenet_backbone=options.imagenet_backbone,
        seed=options.seed,
    )
    return model, DetrModelInfo(), Preprocessing()


_WRITTEN_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "generation_config.json",
    PREPROCESSOR_FILE,
    MODEL_INFO_FILE,
    "README.md",
)
"""What training writes into a model directory (``save_pretrained``, labpipe's files, the card)."""


def _remove_old_model(out_dir: Path) -> None:
    """Delete the files of the detector model in ``out_dir`` (to replace it), and nothing else.

    A folder that holds no labpipe detector (no ``labpipe_detector.json``) is refused: ``--overwrite``
    replaces a model, it never empties a folder of someone's files. Files of other names stay.
    """
    if not (out_dir / MODEL_INFO_FILE).is_file():
        raise FileExistsError(
            f"{out_dir} is not empty and holds no labpipe detector model ({MODEL_INFO_FILE} is missing): "
            "nothing was deleted; choose a new or empty --out folder"
        )
    for name in _WRITTEN_FILES:
        path = out_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def train_detector(
    coco: Path,
    images_dir: Path,
    out_dir: Path,
    options: DetrTrainOptions | None = None,
    *,
    val_coco: Path | None = None,
    val_images_dir: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> DetrTrainResult:
    """Train (or fine-tune) a detector on the COCO set ``coco`` (files in ``images_dir``) into ``out_dir``.

    Validation uses ``val_coco`` (files in ``val_images_dir``, default ``images_dir``), or else a
    seeded ``val_fraction`` of the training images. Returns the best epoch and its metrics; the
    model directory holds that checkpoint.
    """
    options = options or DetrTrainOptions()
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace it")
        _remove_old_model(out_dir)
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    started = time.perf_counter()

    entries = read_coco_set(Path(coco))  # specimen boxes (a lab export's debris are negatives)
    if not entries:
        raise ValueError(f"{coco}: no images")
    if val_coco is not None:
        val_entries = read_coco_set(Path(val_coco))
        train_entries = entries
        val_dir = Path(val_images_dir or images_dir)
    else:
        order = rng.permutation(len(entries))
        n_val = max(1, round(len(entries) * options.val_fraction)) if len(entries) > 1 else 0
        n_val = n_val if options.val_fraction > 0 else 0
        val_entries = [entries[i] for i in order[:n_val]]
        train_entries = [entries[i] for i in order[n_val:]] or entries
        val_dir = Path(images_dir)

    model, info, preprocessing = _new_or_init_model(options)
    if options.init:
        options.um_per_px = info.um_per_px if options.um_per_px is None else options.um_per_px
    device = resolve_device(options.device)
    model.to(device)

    train_set = _load_set(train_entries, Path(images_dir), options.um_per_px, progress)
    val_set = _load_set(val_entries, val_dir, options.um_per_px, progress)

    info = DetrModelInfo(
        tile_size=options.tile_size,
        tile_overlap=options.tile_overlap,
        um_per_px=options.um_per_px,
        labels=["specimen"],
    )
    backbone = (
        model.model.backbone.model if hasattr(model, "model") and hasattr(model.model, "backbone") else None
    )
    backbone_ids: set[int] = set()
    if backbone is not None:
        for name, param in backbone.named_parameters():
            backbone_ids.add(id(param))
            if options.freeze_early_backbone and not options.init and name.startswith(_FROZEN_PREFIXES):
                param.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in backbone_ids], "lr": options.lr},
        {"params": [p for p in params if id(p) in backbone_ids], "lr": options.lr_backbone},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=options.weight_decay)
    lr_drop = max(1, math.ceil(options.epochs * 0.8))
    dropped = False

    detector = DetrDetector.from_model(
        model, info, preprocessing, batch_size=options.batch_size, device=str(device)
    )
    tile = options.tile_size
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_epoch = 0
    stop = False
    val_seconds = 0.0
    for epoch in range(1, options.epochs + 1):
        model.train()
        plan: list[int] = []
        for i, item in enumerate(train_set):
            h, w = item.image.shape[:2]
            k = options.tiles_per_image or max(1, math.ceil(h * w / (tile * tile)))
            plan.extend([i] * k)
        rng.shuffle(plan)
        losses: list[float] = []
        t_epoch = time.perf_counter()
        n_steps = math.ceil(len(plan) / options.batch_size)
        bar = tqdm(total=n_steps, desc=f"epoch {epoch}/{options.epochs}", disable=not progress, unit="step")
        for step in range(n_steps):
            chunk = plan[step * options.batch_size : (step + 1) * options.batch_size]
            pixels, labels = [], []
            for i in chunk:
                item = train_set[i]
                t = random_tile(item.image, item.boxes, tile, rng, scale_range=options.scale_jitter)
                image, boxes = _rot90(t.image, t.boxes, int(rng.integers(0, 4)))
                pixels.append(_jitter(image, rng))
                labels.append({k: v.to(device) for k, v in _labels(boxes, tile).items()})
            x = preprocessing.to_tensor(np.stack(pixels)).to(device)
            outputs = model(pixel_values=x, labels=labels)
            loss = outputs.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            bar.update(1)
            # the budget holds the validation after the epoch too (as long as the last one took)
            if options.max_minutes and time.perf_counter() - started + val_seconds > options.max_minutes * 60:
                stop = True
                break
        bar.close()
        # The rate drops tenfold for the last fifth of the epochs, or of the time budget when
        # --max-minutes will end training first.
        late = options.max_minutes and time.perf_counter() - started > 0.8 * options.max_minutes * 60
        if not dropped and (epoch >= lr_drop or late):
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
            dropped = True
        train_seconds = time.perf_counter() - t_epoch
        t_val = time.perf_counter()
        metrics = _validate(detector, val_set, options.val_score_threshold) if val_set else {}
        val_seconds = time.perf_counter() - t_val
        row = {
            "epoch": epoch,
            "steps": len(losses),
            "train_loss": round(float(np.mean(losses)), 4) if losses else float("nan"),
            "train_seconds": round(train_seconds, 1),
            **metrics,
        }
        history.append(row)
        log.info("detector epoch", **{k: v for k, v in row.items()})
        if progress:
            tqdm.write(" ".join(f"{k}={v}" for k, v in row.items()))
        score = metrics.get("ap50", -1.0)
        # without validation images the latest checkpoint is kept
        improved = not val_set or not best or (score == score and score > best.get("ap50", -1.0))
        if improved:
            best, best_epoch = dict(row), epoch
        info.training = _training_summary(
            coco, images_dir, val_coco, options, train_set, val_set, history, best_epoch, best, started
        )
        if improved:
            save_detr_model(model, out_dir, info, preprocessing)
        else:  # the weights stay those of the best epoch; the history grows
            info.save(out_dir)
        write_model_card(out_dir, info)
        if stop:
            break
    # Final history in the card and settings, whichever epoch was best.
    info.training = _training_summary(
        coco, images_dir, val_coco, options, train_set, val_set, history, best_epoch, best, started
    )
    info.save(out_dir)
    write_model_card(out_dir, info)
    return DetrTrainResult(
        out_dir, best_epoch, best, history, time.perf_counter() - started, len(train_set), len(val_set)
    )


def _training_summary(
    coco: Path,
    images_dir: Path,
    val_coco: Path | None,
    options: DetrTrainOptions,
    train_set: list[_WorkImage],
    val_set: list[_WorkImage],
    history: list[dict[str, float]],
    best_epoch: int,
    best: dict[str, float],
    started: float,
) -> dict[str, Any]:
    import transformers

    settings = asdict(options)
    settings["scale_jitter"] = list(options.scale_jitter)
    return {
        "data": {
            "coco": str(coco),
            "images": str(images_dir),
            "validation": str(val_coco) if val_coco else f"{options.val_fraction:.0%} of the training images",
            "train_images": len(train_set),
            "train_boxes": int(sum(len(i.boxes) for i in train_set)),
            "val_images": len(val_set),
            "val_boxes": int(sum(len(i.boxes) for i in val_set)),
        },
        "settings": settings,
        "history": history,
        "best_epoch": best_epoch,
        "best": best,
        "seconds": round(time.perf_counter() - started, 1),
        "hardware": f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "transformers": transformers.__version__,
    }


def write_model_card(model_dir: Path, info: DetrModelInfo) -> Path:
    """Write ``README.md``: what the model is, how to use it, its data, settings and metrics."""
    t = info.training
    data = t.get("data", {})
    settings = t.get("settings", {})
    best = t.get("best", {})
    lines = [
        f"# labpipe specimen detector: {Path(model_dir).name}",
        "",
        "A DETR-family object detector (one class: `specimen`) for insects on plate images, run by",
        "labpipe on overlapping tiles at its working scale. Load it with",
        "`import labpipe.detect.detr_backbone` (registers the EfficientNet-Lite0 backbone) and",
        "`transformers.AutoModelForObjectDetection.from_pretrained(<this folder>)`, or set",
        '`[detector] kind = "<this folder>"` in labpipe\'s config.toml.',
        "",
        "## Inference settings",
        f"- working scale: {info.um_per_px} µm/px" if info.um_per_px else "- working scale: the image's own",
        f"- tiles: {info.tile_size} px, overlap {info.tile_overlap} px",
        "- preprocessing: `preprocessor_config.json` (RGB / 255, mean 0.5, std 0.5, no resize, no padding)",
        "",
        "## Data",
        f"- training set: `{data.get('coco')}` ({data.get('train_images')} images, "
        f"{data.get('train_boxes')} boxes), images in `{data.get('images')}`",
        f"- validation: {data.get('validation')} ({data.get('val_images')} images, "
        f"{data.get('val_boxes')} boxes)",
        "- the licence of the model's weights follows the licence of its training images: check it",
        "  before publishing (synthetic plates with the Carabidae cut-outs: CC BY 4.0, NEON).",
        "",
        "## Settings",
    ]
    lines += [f"- {k}: {v}" for k, v in settings.items()]
    lines += [
        "",
        "## Metrics (validation, best epoch)",
        f"- best epoch: {t.get('best_epoch')}",
    ]
    lines += [f"- {k}: {v}" for k, v in best.items() if k not in ("epoch",)]
    lines += [
        "",
        "## History",
        "",
        "| epoch | steps | train loss | AP50 | AP50:95 | P | R | F1 | s |",
        "|---" * 9 + "|",
    ]
    for row in t.get("history", []):
        lines.append(
            f"| {row.get('epoch')} | {row.get('steps')} | {row.get('train_loss')} | {row.get('ap50')} | "
            f"{row.get('ap50_95')} | {row.get('precision')} | {row.get('recall')} | {row.get('f1')} | "
            f"{row.get('train_seconds')} |"
        )
    lines += [
        "",
        f"Training time: {t.get('seconds')} s on {t.get('hardware')}; transformers {t.get('transformers')}.",
        "",
        "References: Carion et al., End-to-End Object Detection with Transformers (ECCV 2020);",
        "Meng et al., Conditional DETR for Fast Training Convergence (ICCV 2021);",
        "Gharaee et al., BIOSCAN-5M (NeurIPS 2024) for the training defaults.",
        "",
    ]
    path = Path(model_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def pseudo_label(
    images: list[Path],
    detector: Any,
    out_coco: Path,
    overview_max_side: int = 4096,
    *,
    um_per_px_fallback: float | None = None,
    keep: Callable[[Path, int], bool] | None = None,
    progress: bool = True,
) -> Path:
    """Annotate ``images`` with ``detector`` (the classical one, to bootstrap) as a COCO file.

    Boxes are in full-resolution pixels; each image entry carries its scale when known (from the
    file, else ``um_per_px_fallback``), so training reads it at the model's working scale. ``keep``
    (path, number of boxes) -> bool drops images whose pseudo-labels are not trusted, e.g. wells
    known to hold one insect where the detector found two. The file records which detector made
    the boxes (``info.description``).
    """
    from labpipe.analysis import detect_specimens
    from labpipe.imaging import open_image

    entries: list[CocoImage] = []
    for path in tqdm(images, desc="pseudo-labels", disable=not progress, unit="img"):
        with open_image(path, um_per_px_fallback=um_per_px_fallback) as plate:
            found, _ = detect_specimens(detector, plate, overview_max_side)
            if keep is not None and not keep(Path(path), len(found)):
                continue
            entries.append(
                CocoImage(
                    Path(path).name,
                    plate.width,
                    plate.height,
                    plate.um_per_px,
                    [tuple(float(v) for v in box) for box, _ in found],  # type: ignore[misc]
                )
            )
    version = getattr(detector, "version", type(detector).__name__)
    write_coco_document(coco_document(entries, f"pseudo-labels by {version}"), Path(out_coco))
    return Path(out_coco)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def result_summary(result: DetrTrainResult) -> dict[str, Any]:
    """JSON-ready summary of a training run."""
    return json.loads(
        json.dumps(
            {
                "model_dir": result.model_dir,
                "best_epoch": result.best_epoch,
                "best": result.best,
                "history": result.history,
                "seconds": round(result.seconds, 1),
                "train_images": result.n_train_images,
                "val_images": result.n_val_images,
            },
            default=_json_default,
        )
    )
