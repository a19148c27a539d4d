"""MobileNetV2, CIFAR variant (stride-1 stem and stride-1 second stage, as in
the original code and kuangliu's pytorch-cifar).

Module names follow the original code (``conv1``, ``bn1``,
``layers.N.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0,shortcut.1}``, ``conv2``,
``bn2``, ``fc``) so that its checkpoints load key for key; the classifier is
``fc`` there, not kuangliu's ``linear``. The original pooled with a fixed 4x4
window (32x32 input only); an adaptive pool is the same there and lets other
image sizes run.
"""
import torch.nn as nn
import torch.nn.functional as F

from models.base import ClassifierBase, scaled
from models.registry import MODELS

# (expansion, out_planes, num_blocks, stride)
CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
       (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (carries the stride) -> 1x1 linear projection.

    Stride-1 blocks add a shortcut (identity, or 1x1 conv + BN when the width
    changes, as in the original); stride-2 blocks have none.
    """

    def __init__(self, builder, in_planes, out_planes, expansion, stride):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = builder.conv1x1(in_planes, planes)
        self.bn1 = builder.batchnorm(planes)
        self.conv2 = builder.conv3x3(planes, planes, stride, groups=planes)
        self.bn2 = builder.batchnorm(planes)
        self.conv3 = builder.conv1x1(planes, out_planes)
        self.bn3 = builder.batchnorm(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(builder.conv1x1(in_planes, out_planes), builder.batchnorm(out_planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Net(ClassifierBase):
    def __init__(self, builder, num_classes=10, in_channels=3, image_size=32, width_mult=1.0):
        super().__init__(in_channels)
        stem = scaled(32, width_mult)
        self.conv1 = builder.conv3x3(in_channels, stem, first_layer=True)
        self.bn1 = builder.batchnorm(stem)
        self.layers, last = self._make_layers(builder, stem, width_mult)
        head = scaled(1280, width_mult)
        self.conv2 = builder.conv1x1(last, head)
        self.bn2 = builder.batchnorm(head)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = builder.conv1x1(head, num_classes, last_layer=True)

    @staticmethod
    def _make_layers(builder, in_planes, width_mult):
        layers = []
        for expansion, out, num_blocks, stride in CFG:
            out = scaled(out, width_mult)
            for s in [stride] + [1] * (num_blocks - 1):
                layers.append(InvertedResidual(builder, in_planes, out, expansion, s))
                in_planes = out
        return nn.Sequential(*layers), in_planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        return self.fc(self.avgpool(out)).flatten(1)


@MODELS.register()
def MobileNetV2(builder, **kw):
    return MobileNetV2Net(builder, **kw)
