"""Masked and dense convolution layers (edge-popup with a straight-through estimator).

Every masked layer keeps a real-valued score per weight (or per filter, kernel
or kernel row). The forward pass convolves with ``weight * mask`` where the mask
keeps the top-k fraction (k = ``prune_rate``, the fraction KEPT) of ``|score|``.

Speed: the mask depends only on the scores, so it is cached and recomputed only
when the scores change (tracked with the tensor's in-place version counter, which
every optimiser step and ``load_state_dict`` bumps). When no parameter needs a
gradient (evaluation, or an attack asking for input gradients only) the masked
weight itself is cached, so a frozen ticket costs what a dense network costs.
"""
import math

import torch
import torch.nn as nn

from utils.registry import Registry

CONV_TYPES = Registry("conv type")


def topk_mask(scores, k):
    """0/1 mask keeping ``n - int((1-k)*n)`` entries of largest ``|scores|``."""
    flat = scores.detach().abs().flatten()
    n = flat.numel()
    drop = int((1.0 - k) * n)
    if drop <= 0:
        return torch.ones_like(scores)
    if drop >= n:
        return torch.zeros_like(scores)
    # kthvalue is a selection (no full sort); ties at the threshold fall back to topk
    # so that exactly n - drop entries are kept.
    threshold = torch.kthvalue(flat, drop).values
    keep = flat > threshold
    if int(keep.sum()) != n - drop:
        keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
        keep[torch.topk(flat, n - drop, largest=True, sorted=False).indices] = True
    return keep.to(scores.dtype).view_as(scores)


@CONV_TYPES.register()
class DenseConv(nn.Conv2d):
    """A plain convolution (no scores); used for dense training and dense layers."""


class MaskedConv(nn.Conv2d):
    """Base class of every layer whose weight is masked by scores.

    Subclasses define ``score_shape`` and ``init_scores``; model surgery uses
    ``isinstance(m, MaskedConv)``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scores = nn.Parameter(torch.empty(self.score_shape(), dtype=self.weight.dtype))
        self.prune_rate = 1.0
        self._mask_cache = (None, None)
        self._weight_cache = (None, None)
        self.init_scores()

    def score_shape(self):
        return self.weight.shape

    def init_scores(self):
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def set_prune_rate(self, k):
        self.prune_rate = float(k)

    def compute_mask(self):
        return topk_mask(self.scores, self.prune_rate)

    def _score_key(self):
        s = self.scores
        return (s._version, s.data_ptr(), s.device, s.dtype, self.prune_rate)

    def mask(self):
        """Current 0/1 mask (no gradient), cached until the scores change."""
        key = self._score_key()
        if self._mask_cache[0] != key:
            with torch.no_grad():
                self._mask_cache = (key, self.compute_mask())
        return self._mask_cache[1]

    def _ste_mask(self, mask):
        """The mask in value; gradient to the scores straight through |score|."""
        a = self.scores.abs()
        return mask + (a - a.detach())

    def masked_weight(self):
        mask = self.mask()
        grad_on = torch.is_grad_enabled()
        if grad_on and self.scores.requires_grad:
            return self.weight * self._ste_mask(mask)
        if grad_on and self.weight.requires_grad:
            return self.weight * mask
        w = self.weight
        key = (self._mask_cache[0], w._version, w.data_ptr(), w.device, w.dtype)
        if self._weight_cache[0] != key:
            with torch.no_grad():
                self._weight_cache = (key, w * mask)
        return self._weight_cache[1]

    def clear_cache(self):
        self._mask_cache = (None, None)
        self._weight_cache = (None, None)

    def kept_fraction(self):
        """Fraction of weights whose mask is 1 (broadcast over the weight)."""
        m = self.mask().expand_as(self.weight)
        return float(m.sum() / m.numel())

    def forward(self, x):
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", kept={self.prune_rate}"

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)


@CONV_TYPES.register()
class SubnetConv(MaskedConv):
    """One score per weight; element-wise top-k of |score|."""


@CONV_TYPES.register()
class SubnetConv_filter(MaskedConv):
    """One score per output filter, broadcast over (in, kh, kw)."""

    def score_shape(self):
        return (self.out_channels, 1, 1, 1)

    def init_scores(self):
        nn.init.normal_(self.scores)


@CONV_TYPES.register()
class SubnetConv_kernel(MaskedConv):
    """One score per (out, in) kernel, broadcast over (kh, kw)."""

    def score_shape(self):
        return (self.out_channels, self.in_channels // self.groups, 1, 1)


@CONV_TYPES.register()
class SubnetConv_row(MaskedConv):
    """One score per kernel row, broadcast over kw."""

    def score_shape(self):
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[0], 1)


@CONV_TYPES.register()
class FixedSubnetConv(MaskedConv):
    """The mask is fixed by the loaded scores; scores never train."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scores.requires_grad_(False)


@CONV_TYPES.register()
class SampleSubnetConv(MaskedConv):
    """Mask sampled each forward as Bernoulli(sigmoid(score)); straight-through gradient."""

    def masked_weight(self):
        p = torch.sigmoid(self.scores)
        sample = (torch.rand_like(p) < p).to(p.dtype)
        return self.weight * (sample + (p - p.detach()))

    def kept_fraction(self):
        return float(torch.sigmoid(self.scores.detach()).mean())


def is_masked(module):
    return isinstance(module, MaskedConv)
