"""Validation of a training run (natural and PGD-20 / AutoAttack), its results.json, the
choice of the best epoch, and ``-e/--evaluate``'s own record (``<run>/eval/<time>.json``)."""
import datetime
import hashlib
import json
import logging
import os

from data import make_loader, subset
from evaluation import selection
from evaluation.evaluate import EVAL_ATTACKS, attack_settings, evaluate
from utils.distributed import unwrap
from utils.config import show_progress
from utils.distributed import broadcast_buffers
from utils.provenance import main_protocol, protocol_changes
from utils.run_dir import config_dict

log = logging.getLogger("rst")


def validate(cfg, ctx, device, data, model, progress=False, dataset=None):
    """Natural and (if an attack type is set, or asked) robust metrics on ``dataset`` (default: the val set);
    ``progress``: a bar per batch on stderr (rank 0)."""
    dataset = data.val if dataset is None else dataset
    loader = make_loader(subset(dataset, cfg.n_eval), cfg.test_batch_size, False, cfg,
                         rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed or 0)
    # The bare module on every rank (no DDP collectives: val shards may differ by one
    # batch), with rank 0's BatchNorm statistics, the ones its checkpoint holds.
    model = unwrap(model)
    broadcast_buffers(ctx, model)
    natural = evaluate(model, loader, device, amp=cfg.amp, ctx=ctx, desc="val natural", progress=progress,
                       channels_last=cfg.channels_last)
    robust = None
    if cfg.attack_type:
        attack = EVAL_ATTACKS.get(cfg.eval_attack)(cfg)
        robust = evaluate(model, loader, device, attack=attack, amp=cfg.amp, ctx=ctx,
                          desc=f"val {cfg.eval_attack}", progress=progress, channels_last=cfg.channels_last)
    return natural, robust


def results_dict(cfg, run, state, epochs_done):
    """results.json: accuracies of the last epoch and of the selected one (see evaluation.selection)
    and the protocol that measured them."""
    out = {"task": run.task, "arch": cfg.arch, "set": cfg.set, "prune_rate": cfg.prune_rate,
           "epochs_done": epochs_done, "seed": cfg.seed}
    out.update(selection.result_fields(cfg, state))
    out.update(train_seconds=round(state.train_seconds, 3),
               eval_protocol=main_protocol(cfg, attack_settings(cfg.eval_attack, cfg)))
    return out


def file_sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluate_only(cfg, ctx, run_dir, task, device, data, model):
    """--evaluate (``check_names`` has already required --pretrained): measures, then writes
    ``<run_dir>/eval/<UTC time>.json`` (accuracies, protocol, checkpoint path and sha256,
    config) and nothing else: a training run's results.json and settings.txt stay as they are."""
    natural, robust = validate(cfg, ctx, device, data, model, progress=show_progress(cfg))
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {"task": task, "arch": cfg.arch, "set": cfg.set, "prune_rate": cfg.prune_rate, "evaluate": True,
           "natural_acc1": natural["acc1"], "robust_acc1": robust["acc1"] if robust else None,
           "eval_attack": cfg.eval_attack if robust else None,
           "eval_protocol": main_protocol(cfg, attack_settings(cfg.eval_attack, cfg)),
           "checkpoint": os.path.abspath(cfg.pretrained), "checkpoint_sha256": file_sha256(cfg.pretrained),
           "time": now.isoformat(timespec="seconds"), "config": config_dict(cfg)}
    if ctx.is_main:
        out["record"] = write_new_json(os.path.join(run_dir, "eval"), now.strftime("%Y%m%dT%H%M%SZ"), out)
    log.info("evaluation record: %s", out.get("record"))
    return out


def write_new_json(folder, stem, data):
    """``folder/stem.json``, or ``stem-2.json``, ... if taken (never overwrites); returns the path."""
    os.makedirs(folder, exist_ok=True)
    for n in range(1, 10_000):
        path = os.path.join(folder, f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(data, record=path), fh, indent=2)
        return path
    raise OSError(f"{folder}: no free name for {stem}.json")


def measure(s, model):
    """``selection.select``'s validation: (natural, robust) of ``model`` (default: the one
    given here) on ``dataset`` (default: the test split)."""
    def measure_one(model=model, dataset=None):
        return validate(s.cfg, s.ctx, s.device, s.data, model, dataset=dataset, progress=s.progress)
    return measure_one


def validate_and_select(s, state, epoch, train, lr, last):
    """Validation of one epoch: selection split, test split where needed, scalars.
    Returns (is_best, the epoch line's validation part)."""
    holdout = getattr(s.data, "holdout", None)
    natural, robust, is_best, test = selection.select(measure(s, s.net), state, epoch, train, holdout, last)
    split = "test" if holdout is None else "holdout"
    text = f"{split} natural {natural['acc1']:.2f} robust {'n/a' if robust is None else format(robust['acc1'], '.2f')}"
    values = {f"{split}/natural_acc1": natural["acc1"], f"{split}/loss": natural["loss"],
              f"{split}/robust_acc1": robust["acc1"] if robust else None}
    if holdout is not None and test is not None:
        text += (f", test natural {test['natural_acc1']:.2f} robust "
                 f"{'n/a' if test['robust_acc1'] is None else format(test['robust_acc1'], '.2f')}")
        values.update({"test/natural_acc1": test["natural_acc1"], "test/robust_acc1": test["robust_acc1"]})
    s.run.scalars(epoch, values)
    return is_best, text + (" (best)" if is_best else "")


def reevaluate_if_changed(s, state, resume):
    """A resumed (or finished) run whose evaluation protocol differs from the checkpoint's
    re-measures the latest and the best model instead of copying their numbers."""
    saved = resume[1].get("config") if resume else None
    if resume and protocol_changes(saved, s.cfg):
        best = selection.load_best(unwrap(s.model), s.run.ckpt("model_best.pth"), strict=not s.cfg.not_strict)
        selection.reevaluate(measure(s, s.model), state, s.cfg, saved, getattr(s.data, "holdout", None), best,
                             s.device)
