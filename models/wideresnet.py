"""Wide ResNet for CIFAR (Zagoruyko & Komodakis), the WRN-34-10 used by
Madry/TRADES adversarial training. The registry name ``WideResNet32`` is the
original code's, although the network has depth 34.

Pre-activation wide basic blocks; module names follow the original code
(``conv1``, ``blockN.layer.M.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``,
``fc``) so that its checkpoints load key for key. The original pooled with a
fixed 8x8 window (32x32 input only); an adaptive pool gives the same result
there and lets other image sizes run.
"""
import torch.nn as nn
import torch.nn.functional as F

from models.base import ClassifierBase, scaled
from models.registry import MODELS


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with identity or 1x1 projection shortcut.

    When the shape changes, the shortcut is taken from the pre-activated input
    (as in the original), otherwise from the raw input.
    """

    def __init__(self, builder, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = builder.batchnorm(in_planes)
        self.conv1 = builder.conv3x3(in_planes, out_planes, stride)
        self.bn2 = builder.batchnorm(out_planes)
        self.conv2 = builder.conv3x3(out_planes, out_planes)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = None if self.equal_in_out else builder.conv1x1(in_planes, out_planes, stride)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``n`` blocks; the wrapper exists so keys read ``blockN.layer.M``."""

    def __init__(self, builder, n, in_planes, out_planes, stride):
        super().__init__()
        blocks = [WideBasicBlock(builder, in_planes if i == 0 else out_planes, out_planes,
                                 stride if i == 0 else 1) for i in range(n)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layer(x)


class WideResNet(ClassifierBase):
    def __init__(self, builder, depth=34, widen_factor=10, num_classes=10, in_channels=3,
                 image_size=32, width_mult=1.0):
        super().__init__(in_channels)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [scaled(c, width_mult) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)]
        self.conv1 = builder.conv3x3(in_channels, widths[0], first_layer=True)
        self.block1 = NetworkBlock(builder, n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(builder, n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(builder, n, widths[2], widths[3], 2)
        self.bn1 = builder.batchnorm(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = builder.conv1x1(widths[3], num_classes, last_layer=True)

    def forward(self, x):
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return self.fc(self.avgpool(out)).flatten(1)


@MODELS.register()
def WideResNet32(builder, **kw):
    """WRN-34-10 (depth 34, widen factor 10); the name is the original's."""
    return WideResNet(builder, depth=34, widen_factor=10, **kw)
