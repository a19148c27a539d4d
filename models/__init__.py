"""Model zoo. ``build_model`` turns the resolved config into a network.

Importing this package imports every architecture module, which fills the
``MODELS`` registry; nothing else happens at import.
"""
from models import conv_nets, mobilenetv2, resnet_cifar, resnet_imagenet, vgg, wideresnet  # noqa: F401
from models.builder import builder_from_config
from models.conv_type import CONV_TYPES, MaskedConv
from models.registry import MODELS
from utils.config import check_prune_rate


def build_model(cfg, num_classes, in_channels=3, image_size=32, mean=None, std=None, prune_rate=None):
    """Build ``cfg.arch`` for a dataset; ``prune_rate`` overrides cfg.prune_rate (k, fraction kept)."""
    k = cfg.prune_rate if prune_rate is None else prune_rate
    if _uses_masks(cfg):
        check_prune_rate(k)
    # the original scales --scale-fan by its args.prune_rate even when no layer is masked
    builder = builder_from_config(cfg, prune_rate=k if _uses_masks(cfg) else 1.0, init_prune_rate=k)
    model = MODELS.get(cfg.arch)(builder, num_classes=num_classes, in_channels=in_channels,
                                 image_size=image_size, width_mult=cfg.width_mult, **arch_options(cfg))
    model.set_normalization(mean, std)
    return model


def arch_options(cfg):
    """Architecture-specific flags: only MobileNetV2 has one (--mbv2-stride-fix)."""
    if cfg.arch == "MobileNetV2":
        return {"stride_fix": bool(getattr(cfg, "mbv2_stride_fix", False))}
    return {}


def _uses_masks(cfg):
    return issubclass(CONV_TYPES.get(cfg.conv_type or "SubnetConv"), MaskedConv)


def masked_layers(model):
    return [m for m in model.modules() if isinstance(m, MaskedConv)]


def set_model_prune_rate(model, k):
    """Set k (fraction kept) on every masked layer. No range check: the callers'
    k are checked at the CLI, or (--progressive_prune) may reach k <= 0 as in the original."""
    for m in masked_layers(model):
        m.set_prune_rate(k)
