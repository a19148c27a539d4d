"""The one place every conv/linear layer and BatchNorm of every model is made."""
from dataclasses import dataclass

import torch.nn as nn

from models.bn_type import BN_TYPES
from models.conv_type import CONV_TYPES, MaskedConv, SampleSubnetConv
from models.init import INITS, InitSpec, init_spec_from_config, init_weight, spec_for_layer


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
    first_layer_dense: bool = False   # original ImageNet ResNets: stem is nn.Conv2d, torch init

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
            return self.plain_conv(kernel_size, in_planes, out_planes, stride, bias=True, groups=groups)
        name = self.conv_type
        if first_layer and self.first_layer_type:
            name = self.first_layer_type
        cls = CONV_TYPES.get(name)
        extra = {}
        if issubclass(cls, SampleSubnetConv):  # the constant replaces the random score draw
            extra["score_init_constant"] = self.score_init_constant
        layer = cls(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                    padding=kernel_size // 2, bias=False, groups=groups, **extra)
        masked = isinstance(layer, MaskedConv)
        init_weight(self.init, layer.weight, spec_for_layer(self.init_spec, masked))
        if masked:
            layer.set_prune_rate(self.prune_rate)
        return layer

    def plain_conv(self, kernel_size, in_planes, out_planes, stride=1, bias=False, groups=1):
        """A dense convolution with torch's default init (--init does not touch it)."""
        return CONV_TYPES.get("DenseConv")(in_planes, out_planes, kernel_size=kernel_size, stride=stride,
                                           padding=kernel_size // 2, bias=bias, groups=groups)

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


def builder_from_config(cfg, prune_rate=None, init_prune_rate=None):
    """Builder for the resolved config; ``prune_rate`` overrides cfg.prune_rate (the masks' k),
    ``init_prune_rate`` the k that --scale-fan uses (default: the masks' k)."""
    k = cfg.prune_rate if prune_rate is None else prune_rate
    init_k = k if init_prune_rate is None else init_prune_rate
    first = "DenseConv" if cfg.first_layer_dense else cfg.first_layer_type
    return Builder(conv_type=cfg.conv_type or "SubnetConv", bn_type=cfg.bn_type or "NonAffineBatchNorm",
                   first_layer_type=first, last_layer_dense=cfg.last_layer_dense, init=cfg.init,
                   init_spec=init_spec_from_config(cfg, float(init_k)), prune_rate=float(k),
                   score_init_constant=cfg.score_init_constant,
                   first_layer_dense=bool(cfg.first_layer_dense))
