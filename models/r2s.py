"""R2S (Random RST Switch): N tickets of one random network behind a random switch.

Tickets searched in the same random network share its weights and differ only in
their masks and in their BatchNorm state (a search updates BN running statistics,
and learnable BN parameters if any, under its own mask). An R2S model therefore
holds one shared weight set, N masks and N small sets of BN tensors. Tickets whose
other tensors differ (other seed, other architecture, fine-tuned weights) are
refused.

Switching is per forward pass (per batch), as in the paper's inference: every call
draws one member uniformly at random and the whole batch goes through it. Each
example still sees a uniformly random member, so expected accuracies equal those of
per-example switching; per-batch costs one forward pass where per-example switching
costs up to N, and it is what an attacker faces when querying the deployed model.
An attacker's gradient is that of whichever member is drawn; the members are also
exposed (``num_members``, ``member(j)``) so attacks can use them exactly (see
``attacks.randomized``). An R2S model and its member views are always in eval mode.

Computation: a dense twin of the architecture (every masked layer an ordinary conv)
holds the shared weights; member i runs it through ``torch.func.functional_call``
with weights ``w * mask_i`` and member i's BN tensors. That is the same arithmetic a
masked layer does in evaluation, so a forced member reproduces its source ticket's
predictions exactly.

On disk (:meth:`R2S.state` / :func:`load_r2s`, a weights-only-safe dict): the shared
tensors once, each member's masks bit-packed into one uint8 tensor (1 bit per masked
weight), its BN tensors, kept fraction and source file name.
"""
import copy

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from models.conv_type import MaskedConv, SampleSubnetConv
from utils.errors import UserError

FORMAT = "rst-r2s"
VERSION = 1
# Structure flags needed to rebuild the architecture (see models.builder).
STRUCTURE_KEYS = ("arch", "width_mult", "conv_type", "bn_type", "first_layer_type", "first_layer_dense",
                  "last_layer_dense", "num_classes", "init", "mode", "nonlinearity", "scale_fan",
                  "scale_fan_kept", "mbv2_stride_fix")


def is_bn(module):
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def bn_keys(model):
    """State-dict keys of every BatchNorm module (parameters and running statistics)."""
    keys = []
    for name, m in model.named_modules():
        if is_bn(m):
            keys += [f"{name}.{k}" for k in m.state_dict()]
    return keys


def split_ticket(model):
    """(masks {layer: bool mask}, bn {key: tensor}, shared {key: tensor}) of one ticket model."""
    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, SampleSubnetConv):
            raise UserError("R2S needs deterministic masks; SampleSubnetConv tickets are random")
        if isinstance(m, MaskedConv):
            masks[name] = m.mask().detach().bool().cpu()
    state = model.state_dict()
    bn = {k: state[k].detach().cpu().clone() for k in bn_keys(model)}
    shared = {k: v.detach().cpu() for k, v in state.items() if k not in bn and not k.endswith(".scores")}
    return masks, bn, shared


def check_same_network(shared, other, name, other_name):
    """Refuse tickets whose shared (non-score, non-BN) tensors differ."""
    keys, other_keys = set(shared), set(other)
    bad = sorted(keys ^ other_keys) or [k for k in sorted(keys)
                                         if shared[k].shape != other[k].shape or not torch.equal(shared[k], other[k])]
    if bad:
        raise UserError(f"tickets come from different random networks: '{name}' and '{other_name}' differ "
                        f"in {bad[0]}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; R2S needs "
                        "tickets searched in one random network (same --seed, --arch, --width-mult, --init)")


def pack_masks(masks, names):
    """Concatenate the masks of ``names`` (in order) into one bit-packed uint8 tensor."""
    flat = np.concatenate([masks[n].flatten().numpy() for n in names]) if names else np.zeros(0, bool)
    return torch.from_numpy(np.packbits(flat.astype(np.uint8)))


def unpack_masks(bits, layers):
    """Inverse of :func:`pack_masks`; ``layers`` is [(name, shape), ...]."""
    sizes = [int(np.prod(shape)) for _, shape in layers]
    flat = np.unpackbits(bits.cpu().numpy(), count=sum(sizes)).astype(bool)
    out, start = {}, 0
    for (name, shape), size in zip(layers, sizes):
        out[name] = torch.from_numpy(flat[start:start + size].copy()).view(*shape)
        start += size
    return out


class _Member(nn.Module):
    """Buffers of one member: its masks and BN tensors, aligned to the R2S name lists."""

    def __init__(self, masks, bn, mask_names, bn_names):
        super().__init__()
        for i, n in enumerate(mask_names):
            self.register_buffer(f"m{i}", masks[n])
        for i, n in enumerate(bn_names):
            self.register_buffer(f"b{i}", bn[n])


class _AlwaysEval(nn.Module):
    """A module that is only ever evaluated: ``train()`` keeps it (and every submodule)
    in eval mode. R2S members' BatchNorm statistics are overrides of one shared network:
    a forward in train mode would rewrite them in place, and callers such as
    ``evaluate()`` restoring a previous mode or an attack library's ``model.train()`` would
    otherwise switch the shared network for every member."""

    def train(self, mode=True):
        return super().train(False)


class MemberView(_AlwaysEval):
    """Member i of an R2S model as a model of its own (deterministic; for attacks through
    one ticket). Its mode cannot be changed (see ``_AlwaysEval``)."""

    random_forward = False  # see attacks.pgd.is_randomized

    def __init__(self, r2s, index):
        super().__init__()
        self.r2s, self.index = r2s, int(index)
        self.eval()

    def forward(self, x):
        return self.r2s(x, member=self.index)


class R2S(_AlwaysEval):
    """One shared weight set, N masks; each forward pass draws one member (per batch).

    ``net`` is the dense twin holding the shared weights; ``members`` a list of
    (masks, bn) dicts; ``names``/``prune_rates`` describe the source tickets.
    Always in eval mode (see ``_AlwaysEval``).
    """

    def __init__(self, net, members, names, prune_rates, model_config=None, data_info=None, seed=0):
        super().__init__()
        if not members:
            raise UserError("R2S needs at least one ticket")
        self.net = net.eval().requires_grad_(False)
        self.mask_names = sorted(members[0][0])
        self.bn_names = sorted(members[0][1])
        dense = {f"{n}.weight" for n in self.mask_names}
        missing = [k for k in dense | set(self.bn_names) if k not in net.state_dict()]
        if missing:
            raise UserError(f"R2S: the network has no tensor {missing[0]}")
        self.members = nn.ModuleList([_Member(m, b, self.mask_names, self.bn_names) for m, b in members])
        self.names, self.prune_rates = list(names), [float(k) for k in prune_rates]
        self.model_config, self.data_info = dict(model_config or {}), dict(data_info or {})
        self.forced = None
        self.generator = torch.Generator().manual_seed(int(seed))
        self.eval()

    @property
    def num_members(self):
        return len(self.members)

    @property
    def random_forward(self):
        """True while the switch draws a member per forward pass (no member forced)."""
        return self.forced is None

    def reseed(self, seed):
        """Restart the switch's random draws (its own generator, not torch's global RNG)."""
        self.generator.manual_seed(int(seed))

    def force_member(self, index):
        """Always use member ``index`` (None: random switching again)."""
        if index is not None and not 0 <= int(index) < self.num_members:
            raise UserError(f"R2S member {index} does not exist (0..{self.num_members - 1})")
        self.forced = None if index is None else int(index)

    def member(self, index):
        return MemberView(self, index)

    def draw(self):
        return int(torch.randint(self.num_members, (1,), generator=self.generator))

    def member_tensors(self, index):
        """Weights ``w * mask`` and BN tensors of member ``index`` as functional_call overrides."""
        mem, params = self.members[index], dict(self.net.named_parameters())
        out = {}
        for i, n in enumerate(self.mask_names):
            w = params[f"{n}.weight"]
            out[f"{n}.weight"] = w * getattr(mem, f"m{i}").to(w.dtype)
        for i, n in enumerate(self.bn_names):
            out[n] = getattr(mem, f"b{i}")
        return out

    def forward(self, x, member=None):
        index = member if member is not None else self.forced
        index = self.draw() if index is None else index
        return functional_call(self.net, self.member_tensors(index), (x,))

    def masks(self, index):
        mem = self.members[index]
        return {n: getattr(mem, f"m{i}") for i, n in enumerate(self.mask_names)}

    def state(self):
        """The packed, weights-only-safe dict written to disk."""
        shared = {k: v.detach().cpu() for k, v in self.net.state_dict().items() if k not in self.bn_names}
        layers = [[n, list(getattr(self.members[0], f"m{i}").shape)] for i, n in enumerate(self.mask_names)]
        members = []
        for i, mem in enumerate(self.members):
            bn = {n: getattr(mem, f"b{j}").detach().cpu() for j, n in enumerate(self.bn_names)}
            members.append({"name": self.names[i], "prune_rate": self.prune_rates[i],
                            "mask_bits": pack_masks({k: v.cpu() for k, v in self.masks(i).items()},
                                                    self.mask_names), "bn": bn})
        return {"format": FORMAT, "version": VERSION, "model_config": self.model_config,
                "data_info": self.data_info, "shared": shared, "mask_layers": layers, "members": members}


def dense_twin(ticket_model):
    """A copy of ``ticket_model`` where every masked layer is a plain conv with the same weight."""
    net = copy.deepcopy(ticket_model)
    for name, m in list(net.named_modules()):
        if isinstance(m, MaskedConv):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                             dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                             padding_mode=m.padding_mode).to(m.weight.device, m.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(m.weight)
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, conv)
    return net


def build_r2s(tickets, model_config=None, data_info=None, seed=0):
    """R2S from ``[(name, prune_rate, ticket_model), ...]``; all from one random network."""
    if not tickets:
        raise UserError("R2S needs at least one ticket")
    members, first_shared = [], None
    for name, k, model in tickets:
        masks, bn, shared = split_ticket(model)
        if first_shared is None:
            first_shared = shared
        else:
            check_same_network(first_shared, shared, tickets[0][0], name)
        members.append((masks, bn))
    net = dense_twin(tickets[0][2])
    return R2S(net, members, [t[0] for t in tickets], [t[1] for t in tickets], model_config, data_info, seed)


def r2s_from_state(state, skeleton, seed=0):
    """Rebuild an R2S model from :meth:`R2S.state` given a ticket-shaped ``skeleton`` model."""
    net = dense_twin(skeleton)
    own = net.state_dict()
    bn_names = sorted(state["members"][0]["bn"]) if state["members"] else []
    shared = dict(state["shared"])
    bad = [k for k in own if k not in shared and k not in bn_names]
    bad += [k for k, v in shared.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise UserError(f"R2S file does not match the architecture it names (e.g. {bad[0]})")
    net.load_state_dict({**shared, **state["members"][0]["bn"]})
    layers = [(n, tuple(s)) for n, s in state["mask_layers"]]
    members = [(unpack_masks(m["mask_bits"], layers), dict(m["bn"])) for m in state["members"]]
    return R2S(net, members, [m["name"] for m in state["members"]], [m["prune_rate"] for m in state["members"]],
               state.get("model_config"), state.get("data_info"), seed)


def load_r2s(path, device="cpu", seed=0):
    """Load an R2S file written from :meth:`R2S.state` (weights-only loading)."""
    from models import build_model
    from utils.checkpoint import load_checkpoint
    from utils.config import build_parser

    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"'{path}' is not an R2S file (no '{FORMAT}' format marker)")
    cfg = build_parser().parse_args([])
    for key, value in state.get("model_config", {}).items():
        setattr(cfg, key, value)
    info = state.get("data_info", {})
    k = state["members"][0]["prune_rate"] if state["members"] else 1.0
    skeleton = build_model(cfg, info.get("num_classes") or cfg.num_classes or 10, info.get("in_channels", 3),
                           info.get("image_size", 32), info.get("mean"), info.get("std"), prune_rate=k)
    return r2s_from_state(state, skeleton, seed).to(device)
