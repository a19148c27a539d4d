"""BatchNorm variants. Keys and buffers match torch's BatchNorm2d."""
import torch.nn as nn

from utils.registry import Registry

BN_TYPES = Registry("bn type")


@BN_TYPES.register()
class NonAffineBatchNorm(nn.BatchNorm2d):
    """BatchNorm without learnable scale and shift (the RST default)."""

    def __init__(self, dim, **kwargs):
        super().__init__(dim, affine=False, **kwargs)


@BN_TYPES.register()
class LearnedBatchNorm(nn.BatchNorm2d):
    """Standard BatchNorm with learnable scale and shift."""

    def __init__(self, dim, **kwargs):
        super().__init__(dim, affine=True, **kwargs)
