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
    last_layer_type: str = None
    init: str = "kaiming_normal"
    init_spec: InitSpec = InitSpec()
    prune_rate: float = 1.0
    score_init_constant: float = None

    def __post_init__(self):
        CONV_TYPES.get(self.conv_type)
        BN_TYPES.get(self.bn_type)
        INITS.get(self.init)
        for name in (self.first_layer_type, self.last_layer_type):
            if name is not None:
                CONV_TYPES.get(name)

    def conv(self, kernel_size, in_planes, out_planes, stride=1, first_layer=False,
             last_layer=False, groups=1):
        """kxk convolution, padding k//2, no bias, initialised per --init."""
        name = self.conv_type
        if first_layer and self.first_layer_type:
            name = self.first_layer_type
        if last_layer and self.last_layer_type:
            name = self.last_layer_type
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
    last = "DenseConv" if cfg.last_layer_dense else None
    return Builder(conv_type=cfg.conv_type or "SubnetConv", bn_type=cfg.bn_type or "NonAffineBatchNorm",
                   first_layer_type=first, last_layer_type=last, init=cfg.init,
                   init_spec=InitSpec(cfg.mode, cfg.nonlinearity, cfg.scale_fan, float(k)),
                   prune_rate=float(k), score_init_constant=cfg.score_init_constant)
