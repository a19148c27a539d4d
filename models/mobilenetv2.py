"""MobileNetV2, CIFAR variant (stride-1 stem and stride-1 second stage, as in
the original code and kuangliu's pytorch-cifar).

By default this computes what the original code computes: its depthwise conv
is built without the block's stride, so nothing is ever downsampled. A 32x32
input stays 32x32 to the end, the fixed 4x4 average pool leaves an 8x8 map and
the 1x1-conv classifier's output is flattened: **8 x 8 x num_classes = 640
logits** on CIFAR-10 (in general ``num_classes * (H // 4) * (W // 4)``). The
loss and accuracy then treat every one of them as a class, as the original did.
``--mbv2-stride-fix`` (``stride_fix=True``) gives the network as designed: the
depthwise conv carries the stride (32 -> 4 on CIFAR) and an adaptive pool
leaves ``num_classes`` logits. Keys and shapes are the same either way.

Module names follow the original code (``conv1``, ``bn1``,
``layers.N.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0,shortcut.1}``, ``conv2``,
``bn2``, ``fc``) so that its checkpoints load key for key; the classifier is
``fc`` there, not kuangliu's ``linear``.
"""
import torch.nn as nn
import torch.nn.functional as F

from models.base import ClassifierBase, scaled
from models.registry import MODELS

# (expansion, out_planes, num_blocks, stride)
CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
       (6, 320, 1, 1)]
POOL = 4  # the original's fixed average-pool window (pixels)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection.

    Blocks configured with stride 1 add a shortcut (identity, or 1x1 conv + BN
    when the width changes, as in the original); stride-2 blocks have none,
    whether or not the depthwise conv applies the stride (``stride_fix``).
    """

    def __init__(self, builder, in_planes, out_planes, expansion, stride, stride_fix=False):
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = builder.conv1x1(in_planes, planes)
        self.bn1 = builder.batchnorm(planes)
        self.conv2 = builder.conv3x3(planes, planes, stride if stride_fix else 1, groups=planes)
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
    def __init__(self, builder, num_classes=10, in_channels=3, image_size=32, width_mult=1.0,
                 stride_fix=False):
        super().__init__(in_channels)
        self.stride_fix = stride_fix
        stem = scaled(32, width_mult)
        self.conv1 = builder.conv3x3(in_channels, stem, first_layer=True)
        self.bn1 = builder.batchnorm(stem)
        self.layers, last = self._make_layers(builder, stem, width_mult, stride_fix)
        head = scaled(1280, width_mult)
        self.conv2 = builder.conv1x1(last, head)
        self.bn2 = builder.batchnorm(head)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = builder.conv1x1(head, num_classes, last_layer=True)

    @staticmethod
    def _make_layers(builder, in_planes, width_mult, stride_fix):
        layers = []
        for expansion, out, num_blocks, stride in CFG:
            out = scaled(out, width_mult)
            for s in [stride] + [1] * (num_blocks - 1):
                layers.append(InvertedResidual(builder, in_planes, out, expansion, s, stride_fix))
                in_planes = out
        return nn.Sequential(*layers), in_planes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        if self.stride_fix:
            out = self.avgpool(out)
        else:  # the original's fixed window (a map smaller than it is pooled whole)
            out = F.avg_pool2d(out, (min(POOL, out.shape[-2]), min(POOL, out.shape[-1])))
        return self.fc(out).flatten(1)


@MODELS.register()
def MobileNetV2(builder, **kw):
    return MobileNetV2Net(builder, **kw)
