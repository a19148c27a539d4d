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
    """0/1 mask keeping ``n - int((1-k)*n)`` entries of largest ``|scores|``.

    A selection, not a full sort. On CPU: ``kthvalue`` (O(n)) with an exact
    top-k fallback when ties sit at the threshold. On CUDA: ``topk`` of the
    smaller side, which always selects an exact count and never waits for the
    host (no ``.item()`` synchronisation per layer).
    """
    flat = scores.detach().abs().flatten()
    n = flat.numel()
    drop = int((1.0 - k) * n)
    if drop <= 0:
        return torch.ones_like(scores)
    if drop >= n:
        return torch.zeros_like(scores)
    if flat.is_cuda:
        return _topk_select(flat, drop).to(scores.dtype).view_as(scores)
    threshold = torch.kthvalue(flat, drop).values
    keep = flat > threshold
    if int(keep.sum()) != n - drop:
        keep = _topk_select(flat, drop)
    return keep.to(scores.dtype).view_as(scores)


def _topk_select(flat, drop):
    """Bool mask dropping exactly the ``drop`` smallest entries (ties broken by topk)."""
    n = flat.numel()
    if drop <= n - drop:
        keep = torch.ones(n, dtype=torch.bool, device=flat.device)
        keep[torch.topk(flat, drop, largest=False, sorted=False).indices] = False
    else:
        keep = torch.zeros(n, dtype=torch.bool, device=flat.device)
        keep[torch.topk(flat, n - drop, largest=True, sorted=False).indices] = True
    return keep


class _MaskedWeightSTE(torch.autograd.Function):
    """``weight * mask`` with the edge-popup straight-through gradient to the scores.

    Value: exactly ``weight * mask``. Gradients: ``weight`` gets ``g * mask``;
    ``scores`` get ``(g * weight)`` summed over the dimensions the scores are
    broadcast over, times ``sign(scores)`` (the mask stands in for ``|score|``).
    This is what autograd gives for ``weight * (mask + |s| - |s|.detach())``,
    with one element-wise op in the forward instead of four and no temporaries
    kept for the backward.
    """

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, scores, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        g_weight = grad * mask if ctx.needs_input_grad[0] else None
        g_scores = None
        if ctx.needs_input_grad[1]:
            g_scores = (grad * weight).sum_to_size(scores.shape) * scores.sign()
        return g_weight, g_scores, None


def _state_key(t):
    """Identity of tensor ``t`` in its current state: the object, its in-place
    version counter and its storage address (``.data =`` swaps keep the version)."""
    return t, t._version, t.data_ptr()


def _same_state(key, t):
    """True if ``key`` (from ``_state_key``) was taken from ``t`` in its current state."""
    return key is not None and key[0] is t and key[1] == t._version and key[2] == t.data_ptr()


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

    def mask(self):
        """Current 0/1 mask (no gradient), cached until the scores change.

        The cache key is the scores tensor itself, its in-place version counter
        (bumped by every optimiser step, ``load_state_dict`` and in-place edit),
        its storage address and k, so the top-k selection runs once per
        optimiser step however many forward passes (attack steps) use it.
        """
        key, mask = self._mask_cache
        if key is None or not _same_state(key[0], self.scores) or key[1] != self.prune_rate:
            with torch.no_grad():
                mask = self.compute_mask()
            self._mask_cache = ((_state_key(self.scores), self.prune_rate), mask)
        return mask

    def masked_weight(self):
        """The weight the convolution uses: STE product when scores train, else
        ``weight * mask`` (cached while neither weight nor mask changes)."""
        mask = self.mask()
        grad_on = torch.is_grad_enabled()
        if grad_on and self.scores.requires_grad:
            return _MaskedWeightSTE.apply(self.weight, self.scores, mask)
        if grad_on and self.weight.requires_grad:
            return self.weight * mask
        # no parameter needs a gradient (evaluation, attack steps): reuse weight * mask
        key, masked = self._weight_cache
        if key is None or not _same_state(key[0], self.weight) or key[1] is not mask:
            with torch.no_grad():
                masked = self.weight * mask
            self._weight_cache = ((_state_key(self.weight), mask), masked)
        return masked

    def clear_cache(self):
        self._mask_cache = (None, None)
        self._weight_cache = (None, None)

    def kept_fraction(self):
        """Fraction of weights whose mask is 1 (broadcast over the weight)."""
        m = self.mask().expand_as(self.weight)
        return float(m.sum() / m.numel())

    @torch.compiler.disable
    def forward(self, x):
        """Eager even inside a torch.compile'd model: the caches are Python state
        (version counters) that a compiled graph cannot check, so the graph breaks
        around each masked layer; the convolution itself gains nothing from compiling."""
        return self._conv_forward(x, self.masked_weight(), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", kept={self.prune_rate}"

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)


@CONV_TYPES.register()
class SubnetConv(MaskedConv):
    """One score per weight; element-wise top-k of |score|."""


class _GranularScores(MaskedConv):
    """Base of the filter/kernel/row layers: one score per group of weights.

    In memory the scores have the weight's rank with 1s where they broadcast
    (e.g. ``(out, 1, 1, 1)``), so ``weight * mask`` broadcasts. In state dicts
    they have the original's shapes, ``stored_score_shape()`` (e.g. ``(out,)``),
    so checkpoints move both ways between the original code and ours; loading
    accepts either shape.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_state_dict_post_hook(_store_scores_flat)
        self.register_load_state_dict_pre_hook(_load_scores_any_shape)

    def stored_score_shape(self):
        return tuple(self.score_shape()[:self.STORED_DIMS])


def _store_scores_flat(module, state_dict, prefix, local_metadata):
    key = prefix + "scores"
    if key in state_dict:
        state_dict[key] = state_dict[key].view(module.stored_score_shape())


def _load_scores_any_shape(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """The original's ``(out,)``-style scores (or ours) reshaped to the parameter's shape."""
    key = prefix + "scores"
    value = state_dict.get(key)
    if isinstance(value, torch.Tensor) and tuple(value.shape) in (module.stored_score_shape(),
                                                                  tuple(module.scores.shape)):
        state_dict[key] = value.reshape(module.scores.shape)


@CONV_TYPES.register()
class SubnetConv_filter(_GranularScores):
    """One score per output filter, broadcast over (in, kh, kw); stored as (out,)."""
    STORED_DIMS = 1

    def score_shape(self):
        return (self.out_channels, 1, 1, 1)

    def init_scores(self):
        nn.init.normal_(self.scores)


@CONV_TYPES.register()
class SubnetConv_kernel(_GranularScores):
    """One score per (out, in) kernel, broadcast over (kh, kw); stored as (out, in)."""
    STORED_DIMS = 2

    def score_shape(self):
        return (self.out_channels, self.in_channels // self.groups, 1, 1)


@CONV_TYPES.register()
class SubnetConv_row(_GranularScores):
    """One score per kernel row, broadcast over kw; stored as (out, in, kh)."""
    STORED_DIMS = 3

    def score_shape(self):
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[0], 1)


@CONV_TYPES.register()
class FixedSubnetConv(MaskedConv):
    """The original's fixed subnet: the convolution uses ``weight * scores``.

    Until a checkpoint is loaded the scores are their random init (kaiming
    uniform, trainable), so the layer convolves with ``weight * score``, not a
    mask. Every ``load_state_dict`` ends with :meth:`set_subnet`, which the
    original runs after loading ``--pretrained``: the scores become a frozen
    0/1 mask that zeroes the ``int(k * n)`` smallest ``|score|``, i.e. here k is
    the fraction DROPPED, the reverse of every other layer. Applying it again
    keeps the same mask, so loading a checkpoint of it (resume) changes nothing.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_load_state_dict_post_hook(_set_subnet_after_load)

    def compute_mask(self):
        return (self.scores.detach() != 0).to(self.scores.dtype)

    def masked_weight(self):
        return self.weight * self.scores

    def set_subnet(self):
        with torch.no_grad():
            flat = self.scores.detach().abs().flatten()
            drop = int(self.prune_rate * flat.numel())
            keep = torch.ones_like(flat)
            keep[torch.argsort(flat, stable=True)[:drop]] = 0
            self.scores.copy_(keep.view_as(self.scores))
        self.scores.requires_grad_(False)


def _set_subnet_after_load(module, incompatible_keys):
    module.set_subnet()


@CONV_TYPES.register()
class SampleSubnetConv(MaskedConv):
    """Mask sampled each forward as Bernoulli(sigmoid(score)); straight-through gradient.

    ``score_init_constant`` (--score-init-constant) sets every score instead of
    the random init, as the original does (no random numbers are drawn then).
    """

    def __init__(self, *args, score_init_constant=None, **kwargs):
        self.score_init_constant = score_init_constant
        super().__init__(*args, **kwargs)

    def init_scores(self):
        if self.score_init_constant is None:
            super().init_scores()
        else:
            nn.init.constant_(self.scores, self.score_init_constant)

    def masked_weight(self):
        p = torch.sigmoid(self.scores)
        sample = (torch.rand_like(p) < p).to(p.dtype)
        return self.weight * (sample + (p - p.detach()))

    def kept_fraction(self):
        return float(torch.sigmoid(self.scores.detach()).mean())


def is_masked(module):
    return isinstance(module, MaskedConv)
