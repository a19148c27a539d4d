"""ImageNet ResNets (torchvision layout): 7x7 stride-2 stem, max-pool, four
stages 64-128-256-512, global average pool, classifier as a 1x1 conv.

Module names follow torchvision and the original code (``conv1``, ``bn1``,
``layerN.M.convK``, ``layerN.0.downsample.{0,1}``, ``fc``) so that checkpoints
written by the original implementation load key for key.

``--first-layer-dense`` makes the stem a plain convolution with torch's default
init (``--init`` and ``--scale-fan`` do not touch it), as in the original.

The pool before the classifier is adaptive, so small inputs (32x32 gives a
1x1 map after layer4) run unchanged; padding keeps every stage at least 1x1.
"""
import torch.nn as nn

from models.base import ClassifierBase, scaled
from models.registry import MODELS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, builder, inplanes, planes, stride=1, downsample=None, width=None):
        super().__init__()
        self.conv1 = builder.conv3x3(inplanes, planes, stride)
        self.bn1 = builder.batchnorm(planes)
        self.relu = builder.activation()
        self.conv2 = builder.conv3x3(planes, planes)
        self.bn2 = builder.batchnorm(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, as torchvision v1.5) -> 1x1 expand."""
    expansion = 4

    def __init__(self, builder, inplanes, planes, stride=1, downsample=None, width=None):
        super().__init__()
        width = planes if width is None else width
        out_planes = planes * self.expansion
        self.conv1 = builder.conv1x1(inplanes, width)
        self.bn1 = builder.batchnorm(width)
        self.conv2 = builder.conv3x3(width, width, stride)
        self.bn2 = builder.batchnorm(width)
        self.conv3 = builder.conv1x1(width, out_planes)
        self.bn3 = builder.batchnorm(out_planes)
        self.relu = builder.activation()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ImageNetResNet(ClassifierBase):
    """``width_factor`` widens the bottleneck's inner 3x3 (2 for WideResNet*_2)."""

    def __init__(self, builder, block, layers, num_classes=10, in_channels=3, image_size=32,
                 width_mult=1.0, width_factor=1):
        super().__init__(in_channels)
        widths = [scaled(c, width_mult) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        if builder.first_layer_dense:  # the original: a plain nn.Conv2d, torch's default init
            self.conv1 = builder.plain_conv(7, in_channels, widths[0], stride=2)
        else:
            self.conv1 = builder.conv7x7(in_channels, widths[0], stride=2, first_layer=True)
        self.bn1 = builder.batchnorm(widths[0])
        self.relu = builder.activation()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            layer = self._make_layer(builder, block, planes, blocks, stride, width_factor)
            setattr(self, f"layer{i + 1}", layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = builder.conv1x1(widths[3] * block.expansion, num_classes, last_layer=True)

    def _make_layer(self, builder, block, planes, blocks, stride, width_factor):
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(builder.conv1x1(self.inplanes, out_planes, stride),
                                       builder.batchnorm(out_planes))
        width = planes * width_factor
        layers = [block(builder, self.inplanes, planes, stride, downsample, width=width)]
        self.inplanes = out_planes
        for _ in range(1, blocks):
            layers.append(block(builder, self.inplanes, planes, width=width))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.normalize(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x)).flatten(1)


@MODELS.register()
def ResNet18(builder, **kw):
    return ImageNetResNet(builder, BasicBlock, [2, 2, 2, 2], **kw)


@MODELS.register()
def ResNet34(builder, **kw):
    return ImageNetResNet(builder, BasicBlock, [3, 4, 6, 3], **kw)


@MODELS.register()
def ResNet50(builder, **kw):
    return ImageNetResNet(builder, Bottleneck, [3, 4, 6, 3], **kw)


@MODELS.register()
def ResNet101(builder, **kw):
    return ImageNetResNet(builder, Bottleneck, [3, 4, 23, 3], **kw)


@MODELS.register()
def WideResNet50_2(builder, **kw):
    return ImageNetResNet(builder, Bottleneck, [3, 4, 6, 3], width_factor=2, **kw)


@MODELS.register()
def WideResNet101_2(builder, **kw):
    return ImageNetResNet(builder, Bottleneck, [3, 4, 23, 3], width_factor=2, **kw)
