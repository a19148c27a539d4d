"""The one place every conv/linear layer and BatchNorm of every model is made."""
from dataclasses import dataclass

import torch.nn as nn

from models.bn_type import BN_TYPES
from models.conv_type import CONV_TYPES, MaskedConv, SampleSubnetConv
from models.init import INITS, InitSpec, init_weight


@dataclass
class Builder:
    conv_type: str = "SubnetConv"
    bn_type: str = "NonAffineBatchNorm"
    first_layer_type: str = None
    init: str = "kaiming_normal"
    init_spec: InitSpec = InitSpec()
    prune_rate: float = 1.0
    score_init_constant: float = None
    last_layer_dense: bool = False    # original: classifier is nn.Conv2d with bias, torch init

    def __post_init__(self):
        CONV_TYPES.get(self.conv_type)
        BN_TYPES.get(self.bn_type)
        INITS.get(self.init)
        if self.first_layer_type is not None:
            CONV_TYPES.get(self.first_layer_type)

    def conv(self, kernel_size, in_planes, out_planes, stride=1, first_layer=False,
             last_layer=False, groups=1):
        """kxk convolution, padding k//2, no bias, initialised per --init."""
        if last_layer and self.last_layer_dense:
            return CONV_TYPES.get("DenseConv")(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                                               padding=kernel_size // 2, bias=True, groups=groups)
        name = self.conv_type
        if first_layer and self.first_layer_type:
            name = self.first_layer_type
        layer = CONV_TYPES.get(name)(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                                     padding=kernel_size // 2, bias=False, groups=groups)
        masked = isinstance(layer, MaskedConv)
        spec = self.init_spec if masked else InitSpec(self.init_spec.mode, self.init_spec.nonlinearity)
        init_weight(self.init, layer.weight, spec)
        if masked:
            layer.set_prune_rate(self.prune_rate)
            if isinstance(layer, SampleSubnetConv) and self.score_init_constant is not None:
                nn.init.constant_(layer.scores, self.score_init_constant)
        return layer

    def conv1x1(self, in_planes, out_planes, stride=1, **kw):
        return self.conv(1, in_planes, out_planes, stride, **kw)

    def conv3x3(self, in_planes, out_planes, stride=1, **kw):
        return self.conv(3, in_planes, out_planes, stride, **kw)

    def conv5x5(self, in_planes, out_planes, stride=1, **kw):
        return self.conv(5, in_planes, out_planes, stride, **kw)

    def conv7x7(self, in_planes, out_planes, stride=1, **kw):
        return self.conv(7, in_planes, out_planes, stride, **kw)

    def batchnorm(self, planes):
        return BN_TYPES.get(self.bn_type)(planes)

    def activation(self):
        return nn.ReLU(inplace=True)


def builder_from_config(cfg, prune_rate=None):
    """Builder for the resolved config; ``prune_rate`` overrides cfg.prune_rate."""
    k = cfg.prune_rate if prune_rate is None else prune_rate
    first = "DenseConv" if cfg.first_layer_dense else cfg.first_layer_type
    return Builder(conv_type=cfg.conv_type or "SubnetConv", bn_type=cfg.bn_type or "NonAffineBatchNorm",
                   first_layer_type=first, last_layer_dense=cfg.last_layer_dense, init=cfg.init,
                   init_spec=InitSpec(cfg.mode, cfg.nonlinearity, cfg.scale_fan, float(k)),
                   prune_rate=float(k), score_init_constant=cfg.score_init_constant)
