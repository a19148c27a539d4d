"""Golden: one training step of our trainer equals the original's (tests/golden/steps.json).

Each variant builds the resnet18-usc-unsigned-cifar preset (cResNet18, SubnetConv,
signed_constant, NonAffineBatchNorm) with --prune-rate 0.1 --seed 0, exactly as the
golden README describes, and runs ONE step of ``trainers.train.train_epoch`` on the
golden batch. The golden inputs are normalised; ours are [0, 1] pixels normalised
inside the model with the same constants (the model's input is then bit-identical).

What cannot match bit for bit, and why (the assertions say so where they loosen):
* Our attacks work in pixel space, the original's in normalised space, so the
  adversarial inputs agree to ~2e-7 (normalised units), not bitwise. Losses then
  agree to ~1e-7 relative, score updates to ~3e-5, and after the step a mask entry
  whose |score| sits within ~1e-7 of the keep/drop boundary may flip:
  search_pgd2's layer1.0.conv1 (boundary gap 4.5e-8) flips 2 of 36864 entries.
* Exact boundary ties after the step (listed by the golden README:
  search_natural layer2.1.conv2, search_fgsm layer4.0.conv1) may be broken either way.
Every other after-step mask hash must match exactly.
"""
import functools
import hashlib
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attacks.pgd import random_start
from data.datasets import CIFAR_MEAN, CIFAR_STD
from models import build_model, masked_layers
from trainers.optim import build_criterion, build_optimizer
from trainers.schedulers import get_policy
from trainers.tasks import setup_task
from trainers.train import PGD_TRAIN_STEP, train_epoch
from utils.checkpoint import atomic_save
from utils.config import parse_config
from utils.seed import seed_all
from tests.helpers import ROOT

GOLDEN = os.path.join(ROOT, "tests", "golden")
PRESET = os.path.join(ROOT, "config_rst", "resnet18-usc-unsigned-cifar.yaml")
VARIANTS = ("search_natural", "search_fgsm", "search_pgd2", "ft_inherit_natural")
ATTACKED = ("search_fgsm", "search_pgd2")
PGD_SEED = 123  # the golden calls torch.manual_seed(123) right before the trainer
# Layers whose after-step mask may differ from the golden one (see the module docstring),
# with the most entries by which the number of changed entries may differ.
HASH_EXEMPT = {"search_natural": {"layer2.1.conv2": 2}, "search_fgsm": {"layer4.0.conv1": 2},
               "search_pgd2": {"layer1.0.conv1": 4}}
# Relative tolerance of per-layer update norms, absolute tolerance of logits after the step.
SCORE_RTOL = {"search_natural": 1e-6, "ft_inherit_natural": 1e-6, "search_fgsm": 1e-4, "search_pgd2": 1e-4}
EVAL_ATOL = {"search_natural": 1e-6, "ft_inherit_natural": 1e-6, "search_fgsm": 5e-5, "search_pgd2": 5e-5}
TIE_SWAP_ATOL = 2e-5  # measured 8.2e-6 for search_natural's tie in layer2.1.conv2


def golden(variant):
    with open(os.path.join(GOLDEN, "steps.json")) as fh:
        return json.load(fh)["variants"][variant]


def mask_hash(mask):
    """The golden README's hash: C-order flatten, != 0, np.packbits, SHA-256."""
    bits = (mask.detach().cpu().flatten() != 0).numpy()
    return hashlib.sha256(np.packbits(bits).tobytes()).hexdigest()


def batch():
    x = torch.from_numpy(np.load(os.path.join(GOLDEN, "inputs.npy")))
    y = torch.from_numpy(np.load(os.path.join(GOLDEN, "labels.npy")))
    return x, y


def pixel_std():
    return torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


def normalised(x):
    return (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / pixel_std()


class Recorder:
    """Every forward of the model during the step: its input, mode and logits."""

    def __init__(self, model):
        self.inputs, self.train_mode, self.logits = [], [], []
        self.handles = [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def remove(self):
        for h in self.handles:
            h.remove()

    def _pre(self, module, args):
        self.inputs.append(args[0].detach().clone())
        self.train_mode.append(module.training)

    def _post(self, module, args, out):
        self.logits.append(out.detach().clone())


def layer_summary(model, name, before, mask_before):
    """The golden's per-layer numbers for one masked layer after the step."""
    m = dict(model.named_modules())[name]
    dw2 = (m.weight.detach().double() - before[name + ".weight"].double()).square()
    inside = dw2.mul(mask_before.double()).sum()  # masks are 0/1: products, not (slow) boolean indexing
    mask = m.mask()
    return {"mask_before": mask_hash(mask_before), "mask_after": mask_hash(mask), "kept": int(mask.sum()),
            "changed": int((mask != mask_before).sum()),
            "scores_delta_l2": float((m.scores.detach().double() - before[name + ".scores"].double()).norm()),
            "weight_delta_l2": float(dw2.sum().sqrt()), "weight_delta_l2_inside_mask": float(inside.sqrt()),
            "weight_delta_l2_outside_mask": float((dw2.sum() - inside).clamp_min(0).sqrt())}


@functools.lru_cache(maxsize=None)
def run_step(variant, work_dir):
    """Build, set up the task, run one step; returns the numbers the assertions compare
    (not the model: four full-width cResNet18s would hold ~1 GB)."""
    g = golden(variant)
    cfg = parse_config(["--config", PRESET, *g["cli"]])
    seed_all(cfg.seed)  # the original seeds right before get_model
    model = build_model(cfg, 10, 3, 32, CIFAR_MEAN, CIFAR_STD)
    if cfg.task == "ft_inherit":  # the "searched ticket" is the seeded model itself
        cfg.pretrained = os.path.join(work_dir, "ticket.pth")
        atomic_save({"arch": cfg.arch, "state_dict": model.state_dict()}, cfg.pretrained)
    setup_task(model, cfg, work_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, m in model.named_modules() if m in masked_layers(model)]
    masks_before = {n: layer(model, n).mask().clone() for n in names}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, model)
    lr = get_policy(optimizer, cfg)(0)
    criterion, calls = build_criterion(cfg), []

    def counted(logits, y):
        loss = criterion(logits, y)
        calls.append(float(loss.detach()))
        return loss

    rec = Recorder(model)
    x, y = batch()
    if variant == "search_pgd2":
        torch.manual_seed(PGD_SEED)
    out = train_epoch(model, [(x, y)], optimizer, counted, cfg, torch.device("cpu"), 0, progress=False)
    rec.remove()
    model.eval()
    with torch.no_grad():
        eval_logits = model(x)
    bns = {n: {"num_batches_tracked": int(m.num_batches_tracked),
               "running_mean_sum": float(m.running_mean.double().sum()),
               "running_var_sum": float(m.running_var.double().sum())}
           for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    return dict(epsilon=cfg.epsilon / 255, trainable=trainable, lr=lr,
                group_lrs=[grp["lr"] for grp in optimizer.param_groups], calls=calls, out=out,
                inputs=(rec.inputs[0], rec.inputs[-1]), train_mode=rec.train_mode, logits=rec.logits,
                eval_logits=eval_logits, bn=bns,
                changed=[n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])],
                layers={n: layer_summary(model, n, before, masks_before[n]) for n in names})


@pytest.fixture(params=VARIANTS)
def step(request, tmp_path_factory):
    variant = request.param
    return variant, golden(variant), run_step(variant, str(tmp_path_factory.getbasetemp()))


def layer(model, name):
    return dict(model.named_modules())[name]


def test_golden_step_loss_lr_and_metrics(step):
    variant, g, r = step
    assert r["trainable"] == g["trainable_parameters"]
    assert r["lr"] == g["lr_used"] and r["group_lrs"] == [g["lr_used"]] * 2
    assert r["calls"] == pytest.approx(g["criterion_calls"], rel=1e-6)
    assert r["out"]["loss"] == pytest.approx(g["loss"], rel=1e-6)
    assert (r["out"]["acc1"], r["out"]["acc5"]) == (g["train_acc1"], g["train_acc5"])
    assert len(r["train_mode"]) == g["num_train_mode_forwards"] and all(r["train_mode"])
    _, y = batch()
    ce = [float(F.cross_entropy(logits, y)) for logits in r["logits"]]
    assert ce == pytest.approx(g["ce_per_train_mode_forward"], rel=1e-6)
    # train-mode logits of the training forward (the last one)
    torch.testing.assert_close(r["logits"][-1], torch.tensor(g["train_forward_logits"]),
                               rtol=0, atol=2e-6 if variant in ATTACKED else 1e-6)


def test_golden_step_changes_what_the_original_changes(step):
    _, g, r = step
    assert r["changed"] == g["changed_parameters"]


def test_golden_step_per_layer_updates_and_masks(step):
    variant, g, r = step
    rtol, exempt = SCORE_RTOL[variant], HASH_EXEMPT.get(variant, {})
    assert list(r["layers"]) == list(g["layers"])
    for name, gl in g["layers"].items():
        ours = r["layers"][name]
        assert ours["mask_before"] == gl["mask_before"]["sha256"], f"{name}: initial mask"
        assert ours["scores_delta_l2"] == pytest.approx(gl["scores_delta_l2"], rel=rtol, abs=1e-12), name
        for key in ("weight_delta_l2", "weight_delta_l2_inside_mask", "weight_delta_l2_outside_mask"):
            assert ours[key] == pytest.approx(gl[key], rel=1e-5, abs=1e-12), (name, key)
        assert ours["kept"] == gl["mask_after"]["kept"], name
        if name in exempt:  # boundary tie, or a |score| within ~1e-7 of the boundary (docstring)
            assert abs(ours["changed"] - gl["mask_entries_changed"]) <= exempt[name], name
        else:
            assert ours["changed"] == gl["mask_entries_changed"], name
            assert ours["mask_after"] == gl["mask_after"]["sha256"], f"{name}: mask after the step"


def test_golden_step_batchnorm_and_eval_logits_after(step):
    variant, g, r = step
    assert set(r["bn"]) == set(g["bn_after"])
    for name, gb in g["bn_after"].items():
        ours = r["bn"][name]
        assert ours["num_batches_tracked"] == gb["num_batches_tracked"], name
        assert ours["running_mean_sum"] == pytest.approx(gb["running_mean_sum"], rel=1e-5, abs=1e-6), name
        assert ours["running_var_sum"] == pytest.approx(gb["running_var_sum"], rel=1e-6), name
    # An exempt layer whose mask differs from the golden one broke an exact |score| tie at the
    # boundary the other way (the original's unstable sort has no consistent rule; ours keeps the
    # lowest flat index): one kept weight swapped for another moves the logits by up to ~1e-5.
    swapped = [n for n in HASH_EXEMPT.get(variant, {})
               if r["layers"][n]["mask_after"] != g["layers"][n]["mask_after"]["sha256"]]
    atol = max(EVAL_ATOL[variant], TIE_SWAP_ATOL) if swapped else EVAL_ATOL[variant]
    torch.testing.assert_close(r["eval_logits"], torch.tensor(g["logits_eval_after"]), rtol=0, atol=atol)


@pytest.mark.parametrize("variant", ATTACKED)
def test_golden_step_adversarial_input(variant, tmp_path_factory):
    """The training forward's input is the original's X + delta (pixel vs normalised rounding only)."""
    g = golden(variant)
    r = run_step(variant, str(tmp_path_factory.getbasetemp()))
    x_adv = r["inputs"][1]
    gold = torch.from_numpy(np.load(os.path.join(GOLDEN, g["xadv_file"])))
    torch.testing.assert_close(normalised(x_adv), gold, rtol=0, atol=1e-6)
    x, _ = batch()
    eps = r["epsilon"]
    assert float((x_adv - x).abs().max()) <= eps + 1e-7 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1


def test_golden_pgd_random_start_and_step_size(tmp_path_factory):
    """Same seed, same random start: we draw it per channel as the original does, in pixel
    units (the original in normalised units: the same uniform variates, scaled by 1/std)."""
    g = golden("search_pgd2")
    r = run_step("search_pgd2", str(tmp_path_factory.getbasetemp()))
    x, _ = batch()
    torch.manual_seed(PGD_SEED)
    start = random_start(x, r["epsilon"])
    assert torch.equal(r["inputs"][0], x + start)  # the trainer's first draw is this start
    gold = torch.from_numpy(np.load(os.path.join(GOLDEN, g["delta0_file"])))
    torch.testing.assert_close(start, gold * pixel_std(), rtol=0, atol=2e-7)
    assert PGD_TRAIN_STEP * 255 == pytest.approx(g["alpha_after_train"])  # the original sets alpha = 2


@pytest.mark.parametrize("case", ["cresnet18_subnetconv", "cresnet18_kaiming_normal_learnedbn"])
def test_golden_search_freezing_and_optimizer_groups(case):
    """tests/golden/models/<case>.json: what --task search trains and the original's two
    SGD groups ("bn"-named first, empty here). Parameter names do not depend on the
    width, so the model is built at 1/8 width to save time."""
    with open(os.path.join(GOLDEN, "models", f"{case}.json")) as fh:
        g = json.load(fh)
    cfg = parse_config(["--config", os.path.join(ROOT, "config_rst", g["preset"]), *g["cli"],
                        "--width-mult", "0.125"])
    model = build_model(cfg, 10, 3, 32, CIFAR_MEAN, CIFAR_STD)
    setup_task(model, cfg, "unused")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == g["trainable_parameters"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == g["frozen_parameters"]
    optimizer = build_optimizer(cfg, model)
    get_policy(optimizer, cfg)(0)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = [{"names": [names[id(p)] for p in grp["params"]], "weight_decay": grp["weight_decay"],
             "lr": grp["lr"], "momentum": grp["momentum"], "nesterov": grp["nesterov"]}
            for grp in optimizer.param_groups]
    assert ours == g["optimizer_groups"]
