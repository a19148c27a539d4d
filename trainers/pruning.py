"""--discard_mode and --progressive_prune: k and discarded scores as functions of the epoch.

Both are derived from the epoch number (and, for discard, from the scores
themselves: a discarded score is exactly zero), so resuming needs no extra state.
"""
import torch

from models.conv_type import MaskedConv


def progressive_k(cfg, epoch):
    """k (fraction kept) for ``epoch``: from 0.9 down by discard_rate every discard_epoch."""
    k = 0.9 - cfg.discard_rate * (epoch // max(1, cfg.discard_epoch))
    return max(float(cfg.prune_rate), k)


def discard_fraction(cfg, epoch):
    """Fraction of scores permanently dropped after ``epoch`` (0 when not a boundary)."""
    if (epoch + 1) % max(1, cfg.discard_epoch):
        return 0.0
    return min(1.0, cfg.discard_rate * ((epoch + 1) // max(1, cfg.discard_epoch)))


def _keep_alive(layer):
    def hook(grad):
        return grad * layer.alive
    return hook


def install_discard_hooks(model):
    """Mask score gradients of discarded (zeroed) scores; call once after loading."""
    for m in model.modules():
        if isinstance(m, MaskedConv):
            m.alive = (m.scores.detach() != 0).to(m.scores.dtype)
            m.scores.register_hook(_keep_alive(m))


def discard_scores(model, optimizer, fraction):
    """Zero the lowest-|score| ``fraction`` of each layer, with their gradient and optimiser state."""
    if fraction <= 0:
        return
    for m in model.modules():
        if not isinstance(m, MaskedConv):
            continue
        flat = m.scores.detach().abs().flatten()
        drop = int(fraction * flat.numel())
        if drop <= 0:
            continue
        idx = torch.topk(flat, drop, largest=False, sorted=False).indices
        alive = torch.ones_like(flat)
        alive[idx] = 0.0
        m.alive = (m.alive.flatten() * alive).view_as(m.scores)
        with torch.no_grad():
            m.scores.mul_(m.alive)
            if m.scores.grad is not None:
                m.scores.grad.mul_(m.alive)
        for buf in optimizer.state.get(m.scores, {}).values():
            if torch.is_tensor(buf) and buf.shape == m.scores.shape:
                buf.mul_(m.alive)
