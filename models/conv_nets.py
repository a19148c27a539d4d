"""Small networks of the Lottery Ticket / edge-popup papers: Conv2/4/6/8,
Conv4Wide/Conv6Wide and FC. No BatchNorm.

``convs`` is a Sequential of conv3x3 + ReLU with a 2x2 max-pool after every
two convs; ``linear`` is a Sequential of 1x1 convs + ReLU applied to the
flattened feature map viewed as [B, C*H*W, 1, 1], so the fully connected
layers are masked like any conv. The indices (``convs.N``, ``linear.N``) match
the original code, so its checkpoints load key for key.

Widths: the original Conv2-8 ignore --width-mult and the Wide variants scale
every width with it. Here the conv widths of all of them scale (identical at
width 1), the hidden fully connected widths (256) scale only in the Wide
variants, and FC's hidden widths (300, 100) scale since they are its only
widths. The flattened size is computed from the input channels and image size
(the original hard-coded 32x32 RGB, and 28x28 grey for FC). A max-pool that
would shrink the map below 1x1 is an ``nn.Identity``, keeping indices stable.
"""
import torch.nn as nn

from models.base import ClassifierBase, scaled
from models.registry import MODELS

STAGES = {"Conv2": (64,), "Conv4": (64, 128), "Conv6": (64, 128, 256), "Conv8": (64, 128, 256, 512)}


def make_convs(builder, stages, in_channels, image_size, width_mult):
    """Two conv3x3+ReLU per stage, then a max-pool; returns (convs, flat_size)."""
    layers = []
    channels, size = in_channels, image_size
    for width in stages:
        out = scaled(width, width_mult)
        for _ in range(2):
            layers += [builder.conv3x3(channels, out, first_layer=not layers), nn.ReLU()]
            channels = out
        layers.append(nn.MaxPool2d((2, 2)) if size >= 2 else nn.Identity())
        size = max(1, size // 2)
    return nn.Sequential(*layers), channels * size * size


def make_linear(builder, in_features, hidden, num_classes, first_layer=False):
    """1x1 convs with ReLU between them: in -> hidden... -> num_classes."""
    layers = []
    for i, out in enumerate(hidden):
        layers += [builder.conv1x1(in_features, out, first_layer=first_layer and i == 0), nn.ReLU()]
        in_features = out
    layers.append(builder.conv1x1(in_features, num_classes, last_layer=True))
    return nn.Sequential(*layers)


class ConvNet(ClassifierBase):
    def __init__(self, builder, stages, hidden=(256, 256), scale_hidden=False, num_classes=10,
                 in_channels=3, image_size=32, width_mult=1.0):
        super().__init__(in_channels)
        self.convs, self.flat_size = make_convs(builder, stages, in_channels, image_size, width_mult)
        if scale_hidden:
            hidden = [scaled(h, width_mult) for h in hidden]
        self.linear = make_linear(builder, self.flat_size, hidden, num_classes)

    def forward(self, x):
        out = self.convs(self.normalize(x))
        # reshape, not view: a channels-last map is not contiguous in NCHW order
        out = out.reshape(out.size(0), self.flat_size, 1, 1)
        return self.linear(out).flatten(1)


class FCNet(ClassifierBase):
    """Fully connected in -> 300 -> 100 -> classes on the flattened image."""

    def __init__(self, builder, num_classes=10, in_channels=3, image_size=32, width_mult=1.0):
        super().__init__(in_channels)
        self.flat_size = in_channels * image_size * image_size
        hidden = [scaled(h, width_mult) for h in (300, 100)]
        self.linear = make_linear(builder, self.flat_size, hidden, num_classes, first_layer=True)

    def forward(self, x):
        out = self.normalize(x)
        out = out.reshape(out.size(0), self.flat_size, 1, 1)
        return self.linear(out).flatten(1)


@MODELS.register()
def Conv2(builder, **kw):
    return ConvNet(builder, STAGES["Conv2"], **kw)


@MODELS.register()
def Conv4(builder, **kw):
    return ConvNet(builder, STAGES["Conv4"], **kw)


@MODELS.register()
def Conv6(builder, **kw):
    return ConvNet(builder, STAGES["Conv6"], **kw)


@MODELS.register()
def Conv8(builder, **kw):
    return ConvNet(builder, STAGES["Conv8"], **kw)


@MODELS.register()
def Conv4Wide(builder, **kw):
    return ConvNet(builder, STAGES["Conv4"], scale_hidden=True, **kw)


@MODELS.register()
def Conv6Wide(builder, **kw):
    return ConvNet(builder, STAGES["Conv6"], scale_hidden=True, **kw)


@MODELS.register()
def FC(builder, **kw):
    return FCNet(builder, **kw)
