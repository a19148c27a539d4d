"""CIFAR-style VGG with BatchNorm; classifier is one 1x1 conv (so it is masked too).

``features`` indices match the original code (conv, bn, relu per layer, one
max-pool per 'M', then a pool), so its checkpoints load key for key. A max-pool
that would shrink the map below 1x1 (images smaller than 32x32) is replaced by
an ``nn.Identity`` rather than dropped, which keeps those indices stable. The
final pool is adaptive, so any remaining map is averaged down to 1x1.
"""
import torch.nn as nn

from models.base import ClassifierBase, scaled
from models.registry import MODELS

CFGS = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "VGG19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_features(builder, cfg, in_channels, image_size, width_mult):
    """Sequential of conv3x3-BN-ReLU and max-pools; returns (features, out_channels)."""
    layers = []
    size = image_size
    channels = in_channels
    for i, item in enumerate(cfg):
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2) if size >= 2 else nn.Identity())
            size = max(1, size // 2)
            continue
        out = scaled(item, width_mult)
        layers += [builder.conv3x3(channels, out, first_layer=i == 0), builder.batchnorm(out),
                   nn.ReLU(inplace=True)]
        channels = out
    layers.append(nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*layers), channels


class VGG(ClassifierBase):
    def __init__(self, builder, cfg, num_classes=10, in_channels=3, image_size=32, width_mult=1.0):
        super().__init__(in_channels)
        self.features, channels = make_features(builder, cfg, in_channels, image_size, width_mult)
        self.classifier = builder.conv1x1(channels, num_classes, last_layer=True)

    def forward(self, x):
        out = self.features(self.normalize(x))
        return self.classifier(out).flatten(1)


@MODELS.register()
def VGG11(builder, **kw):
    return VGG(builder, CFGS["VGG11"], **kw)


@MODELS.register()
def VGG16(builder, **kw):
    return VGG(builder, CFGS["VGG16"], **kw)
