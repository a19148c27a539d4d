"""Masked and dense convolution layers (edge-popup with a straight-through estimator).

Every masked layer keeps a real-valued score per weight (or per filter, kernel
or kernel row). The forward pass convolves with ``weight * mask`` where the mask
keeps the top-k fraction (k = ``prune_rate``, the fraction KEPT) of ``|score|``.

Speed: the mask depends only on the scores, so it is cached (as bool) and
recomputed only when the scores change (tracked with the tensor's in-place
version counter, which every optimiser step and ``load_state_dict`` bumps), by a
selection rather than a sort. The masked weight ``weight * mask`` is cached too:
attack steps and evaluation (no parameter needs a gradient) use it as is, so a
frozen ticket costs what a dense network costs, and the training forward of a
search step returns the same tensor through the straight-through function.
Beyond a dense step, a search step holds the scores, a bool mask and one masked
weight; its extra work is one selection and a few element-wise ops per layer.
"""
import math

import numpy as np
import torch
import torch.nn as nn

from utils.registry import Registry

CONV_TYPES = Registry("conv type")


def topk_mask(scores, k):
    """0/1 mask in the dtype of ``scores``: ``topk_keep`` as numbers."""
    return topk_keep(scores, k).to(scores.dtype)


def topk_keep(scores, k):
    """Bool mask keeping ``n - int((1-k)*n)`` entries of largest ``|scores|``.

    Ties at the threshold: of the entries whose ``|score|`` equals the largest
    dropped value, the ones with the lowest flat (C-order) indices are kept, on
    every device (the original's unstable sort broke such ties arbitrarily).

    A selection, never a full sort on CPU: numpy's ``partition`` finds the
    threshold (vectorised introselect, about 20x faster than ``torch.kthvalue``
    on a 2.4M-entry layer; this runs once per layer per optimiser step) and one
    comparison writes the mask. On other devices (and dtypes numpy lacks) a
    stable sort gives the same mask without waiting for the host.
    """
    n = scores.numel()
    drop = int((1.0 - k) * n)
    if drop <= 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if drop >= n:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    flat = scores.detach().reshape(-1)  # C order, whatever the memory format
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_FLOATS:
        return _partition_select(flat, drop).view(scores.shape)
    return _sort_select(flat.abs(), drop).view(scores.shape)


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def _partition_select(flat, drop):
    """CPU, 1-D ``flat`` (the scores): the bool mask. Temporaries: ``|flat|`` (which
    the comparison then overwrites) and numpy's partitioned copy of it."""
    absolute = flat.abs()
    part = np.partition(absolute.numpy(), drop - 1)  # part[:drop] <= threshold <= part[drop:]
    threshold = float(part[drop - 1])  # the drop-th smallest |score| (exact as a Python float)
    missing = 0
    if part[drop:].min() == threshold:  # ties: fewer than n - drop entries exceed the threshold
        missing = int(np.count_nonzero(part[drop:] == threshold))
    del part
    tied = torch.nonzero(absolute == threshold).view(-1)[:missing] if missing else None  # lowest first
    keep = torch.gt(absolute, threshold, out=absolute).bool()  # a float compare, then one cast
    if tied is not None:
        keep[tied] = True
    return keep


def _sort_select(values, drop):
    """Any device, 1-D ``values`` = |scores|: the same mask as ``_partition_select`` from
    a stable descending sort (ties keep index order, so their lowest indices); no host sync."""
    order = torch.sort(values, descending=True, stable=True).indices[: values.numel() - drop]
    return torch.zeros(values.shape, dtype=torch.bool, device=values.device).index_fill_(0, order, True)


class _MaskedWeightSTE(torch.autograd.Function):
    """``weight * mask`` with the edge-popup straight-through gradient to the scores.

    ``mask`` may be bool. Value: ``product``, the layer's cached ``weight * mask`` (the attack steps
    of the same optimiser step already computed it, so the training forward
    costs no multiply and holds no second copy). Gradients: ``weight`` gets
    ``g * mask``; ``scores`` get ``(g * weight)`` summed over the dimensions the
    scores are broadcast over, times ``sign(scores)`` (the mask stands in for
    ``|score|``). This is what autograd gives for
    ``weight * (mask + |s| - |s|.detach())``, with no element-wise op in the
    forward instead of four and no temporaries kept for the backward.
    """

    @staticmethod
    def forward(ctx, weight, scores, mask, product):
        ctx.save_for_backward(weight, scores, mask)
        return product.detach()  # an alias: the cache itself never joins the graph

    @staticmethod
    def backward(ctx, grad):
        weight, scores, mask = ctx.saved_tensors
        g_weight = grad * mask if ctx.needs_input_grad[0] else None
        g_scores = None
        if ctx.needs_input_grad[1]:
            g_scores = (grad * weight).sum_to_size(scores.shape)
            g_scores = g_scores.mul_(scores.sign())  # g_scores is a fresh tensor here
        return g_weight, g_scores, None, None


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
        self.clear_cache()
        self.init_scores()

    def score_shape(self):
        return self.weight.shape

    def init_scores(self):
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def set_prune_rate(self, k):
        self.prune_rate = float(k)

    def compute_mask(self):
        """The mask for the current scores, bool (or 0/1 numbers: ``keep`` converts)."""
        return topk_keep(self.scores, self.prune_rate)

    def keep(self):
        """Current mask as bool (no gradient), cached until the scores or k change.

        The cache key is the scores tensor itself, its in-place version counter
        (bumped by every optimiser step, ``load_state_dict`` and in-place edit),
        its storage address and k, so the top-k selection runs once per
        optimiser step however many forward passes (attack steps) use it. The
        forward pass uses this bool mask (a byte per entry, a quarter of a float
        mask): a search step then holds, beyond a dense step, only the scores,
        this mask and the masked weight.
        """
        key, keep = self._keep_cache
        if key is None or not _same_state(key[0], self.scores) or key[1] != self.prune_rate:
            # drop the stale mask and masked weight first: the new ones can then reuse
            # their memory (fewer, larger holes in the heap; a lower peak on CPU)
            self.clear_cache()
            with torch.no_grad():
                keep = self.compute_mask().bool()
            self._keep_cache = ((_state_key(self.scores), self.prune_rate), keep)
        return keep

    def mask(self):
        """Current 0/1 mask in the scores' dtype (no gradient): the same tensor
        while the scores and k are unchanged, built from ``keep()`` on demand."""
        keep = self.keep()
        source, mask = self._mask_cache
        if source is not keep:
            mask = keep.to(self.scores.dtype)
            self._mask_cache = (keep, mask)
        return mask

    def masked_weight(self):
        """The weight the convolution uses: STE product when scores train, else
        ``weight * mask``; the product is cached while neither weight nor mask
        changes, and the STE returns that same tensor as its value."""
        keep = self.keep()
        grad_on = torch.is_grad_enabled()
        if grad_on and self.weight.requires_grad and not self.scores.requires_grad:
            return self.weight * keep  # weights train: a new product every step anyway
        product = self._product(keep)
        if grad_on and self.scores.requires_grad:
            return _MaskedWeightSTE.apply(self.weight, self.scores, keep, product)
        return product  # no parameter needs a gradient (evaluation, attack steps)

    def _product(self, keep):
        """``weight * mask`` (no graph), cached for the current weight and mask."""
        key, product = self._weight_cache
        if key is None or not _same_state(key[0], self.weight) or key[1] is not keep:
            with torch.no_grad():
                product = self.weight * keep  # bit-identical to multiplying by a 0./1. mask
            self._weight_cache = ((_state_key(self.weight), keep), product)
        return product

    def clear_cache(self):
        self._keep_cache = (None, None)
        self._mask_cache = (None, None)
        self._weight_cache = (None, None)

    def kept_fraction(self):
        """Fraction of weights whose mask is 1 (broadcast over the weight)."""
        m = self.keep().expand_as(self.weight)
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
