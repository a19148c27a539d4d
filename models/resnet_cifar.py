"""CIFAR-style ResNets: 3x3 stem with stride 1, stages 64-128-256-512,
global average pool, classifier as a 1x1 conv (so it is masked too).

``cResNet*`` is post-activation (the original README calls cResNet18
"PreActResNet18"); ``PreActResNet18`` is the true pre-activation network.
"""
import torch.nn as nn
import torch.nn.functional as F

from models.base import ClassifierBase, scaled
from models.registry import MODELS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, builder, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = builder.conv3x3(in_planes, planes, stride)
        self.bn1 = builder.batchnorm(planes)
        self.conv2 = builder.conv3x3(planes, planes)
        self.bn2 = builder.batchnorm(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(builder.conv1x1(in_planes, planes, stride), builder.batchnorm(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, builder, in_planes, planes, stride=1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = builder.conv1x1(in_planes, planes)
        self.bn1 = builder.batchnorm(planes)
        self.conv2 = builder.conv3x3(planes, planes, stride)
        self.bn2 = builder.batchnorm(planes)
        self.conv3 = builder.conv1x1(planes, out_planes)
        self.bn3 = builder.batchnorm(out_planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(builder.conv1x1(in_planes, out_planes, stride),
                                          builder.batchnorm(out_planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, builder, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = builder.batchnorm(in_planes)
        self.conv1 = builder.conv3x3(in_planes, planes, stride)
        self.bn2 = builder.batchnorm(planes)
        self.conv2 = builder.conv3x3(planes, planes)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(builder.conv1x1(in_planes, planes, stride))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class CifarResNet(ClassifierBase):
    def __init__(self, builder, block, num_blocks, num_classes=10, in_channels=3, image_size=32,
                 width_mult=1.0, preact=False):
        super().__init__(in_channels)
        widths = [scaled(c, width_mult) for c in (64, 128, 256, 512)]
        self.in_planes = widths[0]
        self.preact = preact
        self.conv1 = builder.conv3x3(in_channels, widths[0], first_layer=True)
        if not preact:
            self.bn1 = builder.batchnorm(widths[0])
        strides = (1, 2, 2, 2)
        for i, (w, n, s) in enumerate(zip(widths, num_blocks, strides)):
            setattr(self, f"layer{i + 1}", self._make_layer(builder, block, w, n, s))
        if preact:
            self.bn = builder.batchnorm(widths[3] * block.expansion)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = builder.conv1x1(widths[3] * block.expansion, num_classes, last_layer=True)

    def _make_layer(self, builder, block, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(builder, self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = F.relu(self.bn(out))
        return self.fc(self.avgpool(out)).flatten(1)


@MODELS.register()
def cResNet18(builder, **kw):
    return CifarResNet(builder, BasicBlock, [2, 2, 2, 2], **kw)


@MODELS.register()
def cResNet34(builder, **kw):
    return CifarResNet(builder, BasicBlock, [3, 4, 6, 3], **kw)


@MODELS.register()
def cResNet50(builder, **kw):
    return CifarResNet(builder, Bottleneck, [3, 4, 6, 3], **kw)


@MODELS.register()
def cResNet101(builder, **kw):
    return CifarResNet(builder, Bottleneck, [3, 4, 23, 3], **kw)


@MODELS.register()
def PreActResNet18(builder, **kw):
    return CifarResNet(builder, PreActBlock, [2, 2, 2, 2], preact=True, **kw)
