"""Base class of every architecture: input normalisation lives inside the model.

Attacks work in [0, 1] pixel space; the model normalises with its dataset's
mean/std as its first step. The constants are non-persistent buffers, so the
state_dict keys stay exactly those of the original implementation.
"""
import torch
import torch.nn as nn


class Normalize(nn.Module):
    def __init__(self, mean=None, std=None, channels=3):
        super().__init__()
        mean = [0.0] * channels if mean is None else list(mean)
        std = [1.0] * channels if std is None else list(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class ClassifierBase(nn.Module):
    """Holds ``self.normalize``; subclasses call it first in ``forward``."""

    def __init__(self, in_channels=3):
        super().__init__()
        self.normalize = Normalize(channels=in_channels)

    def set_normalization(self, mean, std):
        device = self.normalize.mean.device
        channels = self.normalize.mean.numel()
        self.normalize = Normalize(mean, std, channels).to(device)


def scaled(channels, width_mult):
    """Width of a layer scaled by --width-mult: int() truncates, as the original's
    Conv4Wide/Conv6Wide do; at least 1 channel (the original makes a 0-wide layer)."""
    return max(1, int(channels * width_mult))
