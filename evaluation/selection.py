"""Model selection and the accuracies results.json reports, each with where it was measured.

* ``best_*``: the epoch chosen as ``model_best.pth`` (highest robust accuracy when an
  attack is set, else natural) on the selection split: the test split by default (the
  paper's protocol), or the ``--val_split`` hold-out of the training set. ``best_acc1``
  is that selection metric; ``best_natural_acc1`` / ``best_robust_acc1`` are the chosen
  epoch's accuracies on the TEST split.
* ``last_*``: the last epoch's accuracies on the test split (``natural_acc1`` /
  ``robust_acc1`` are the same numbers, kept for scripts that read them).
* ``history``: every validation of the run on the selection split (epoch, train,
  natural and robust top-1), from which the figures judge convergence.

Without ``--val_split`` the selection split is the test split, so nothing is
measured twice; with it, the test split is measured only at a new best and at the
last epoch. ``measure(model=None, dataset=None) -> (natural, robust)`` is the
caller's validation (robust None without an attack); ``dataset`` None is the test split.
"""
import copy
import logging
import os

import torch

from data.holdout import HOLDOUT_SEED
from models import masked_layers
from utils.checkpoint import extract_state_dict, load_checkpoint, load_model_state
from utils.errors import UserError
from utils.provenance import protocol_changes

log = logging.getLogger("rst")


def summary(natural, robust):
    return {"natural_acc1": natural["acc1"], "robust_acc1": robust["acc1"] if robust else None}


def select(measure, state, epoch, train, holdout, last):
    """Validate on the selection split, record it; returns (natural, robust, is_best, test summary or None)."""
    natural, robust = measure(dataset=holdout)
    is_best = state.record(epoch, train, natural, robust)
    test = summary(natural, robust) if holdout is None else (summary(*measure()) if is_best or last else None)
    if is_best:
        state.best_epoch, state.test_at_best = epoch, test
    if last:
        state.last_test = test
    return natural, robust, is_best, test


def selection_split(cfg):
    if not cfg.val_split:
        return "test split (the paper's protocol: the reported split also picks the best epoch)"
    return (f"hold-out of {cfg.val_split:g} of the training set (stratified, seed {HOLDOUT_SEED}), "
            "never trained on")


def result_fields(cfg, state):
    """The best_* / last_* fields of results.json (accuracies in percent, None where not measured)."""
    attack = bool(cfg.attack_type)
    last = state.last_test
    if last is None and not cfg.val_split:  # a checkpoint from before last_test was recorded
        last = {"natural_acc1": state.natural_acc1, "robust_acc1": state.robust_acc1}
    at_best = state.test_at_best
    if at_best is None and not cfg.val_split and state.best_acc1 >= 0:
        at_best = {"natural_acc1": state.natural_acc1_at_best_robustness if attack else state.best_acc1,
                   "robust_acc1": state.best_acc1 if attack else None}
    last, at_best = last or {}, at_best or {}
    return {"natural_acc1": last.get("natural_acc1"), "robust_acc1": last.get("robust_acc1"),
            "last_natural_acc1": last.get("natural_acc1"), "last_robust_acc1": last.get("robust_acc1"),
            "best_acc1": state.best_acc1 if state.best_acc1 >= 0 else None,
            "best_epoch": state.best_epoch,
            "best_natural_acc1": at_best.get("natural_acc1"), "best_robust_acc1": at_best.get("robust_acc1"),
            "natural_acc1_at_best_robustness": state.natural_acc1_at_best_robustness if attack else None,
            "selection": selection_split(cfg),
            "history": list(state.history)}  # every validation on the selection split (convergence checks)


def reevaluate(measure, state, cfg, saved_config, holdout, best_model, device):
    """Re-measure the loaded (latest) model and ``best_model`` when the evaluation protocol
    differs from the one the checkpoint's numbers were measured with. Returns the changes.

    ``best_model`` None (no model_best.pth): the best is reset, so the next validation
    writes one. The global RNG is left as it was, so training continues as it would have.
    """
    changes = protocol_changes(saved_config, cfg)
    if not changes or (state.best_acc1 < 0 and state.natural_acc1 is None):
        return []
    log.warning("evaluation settings differ from the checkpoint's (%s): re-evaluating instead of copying "
                "its numbers", "; ".join(changes))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        natural, robust = measure(dataset=holdout)
        chosen = robust or natural
        state.natural_acc1, state.robust_acc1 = natural["acc1"], robust["acc1"] if robust else None
        state.curr_acc1, state.curr_acc5 = chosen["acc1"], chosen["acc5"]
        state.last_test = summary(natural, robust) if holdout is None else summary(*measure())
        state.best_acc1, state.best_acc5, state.natural_acc1_at_best_robustness = -1.0, -1.0, None
        state.test_at_best = None
        if best_model is not None:
            natural, robust = measure(model=best_model, dataset=holdout)
            chosen = robust or natural
            state.best_acc1, state.best_acc5 = chosen["acc1"], chosen["acc5"]
            state.natural_acc1_at_best_robustness = natural["acc1"]
            state.test_at_best = (summary(natural, robust) if holdout is None
                                  else summary(*measure(model=best_model)))
        else:
            state.best_epoch = None
    return changes


def load_best(model, path, strict=True):
    """A copy of ``model`` with the weights of ``path`` (the run's model_best.pth), or None if absent."""
    if not os.path.isfile(path):
        return None
    best = copy.deepcopy(model)
    load_model_state(best, extract_state_dict(load_checkpoint(path), path), strict=strict, path=path)
    for m in masked_layers(best):
        m.clear_cache()
    return best


def check_same_split(cfg, resume):
    """A resumed run keeps its --val_split: otherwise the hold-out would hold examples it trained on."""
    if not resume:
        return
    path, ckpt = resume
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    if saved.get("val_split") != cfg.val_split:
        raise UserError(f"--val_split {cfg.val_split} differs from the checkpoint's ({saved.get('val_split')}) "
                        f"in '{path}': the hold-out would contain examples the model trained on; resume with "
                        "the same --val_split or start a new run")
