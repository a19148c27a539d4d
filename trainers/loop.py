"""Wiring: config -> data, model, task, optimiser -> the epoch loop -> results.

Where the parts live: the batch loops in ``trainers.train`` / ``evaluation.evaluate``;
validation, results.json and ``-e`` in ``evaluation.validation``; checkpoints, resume
and SIGTERM/Ctrl-C in ``trainers.resume``; which folder a run may use in
``utils.run_guard``. This module connects them (and re-exports their public names).
Only rank 0 writes files.
"""
import json
import logging
import sys
import time
from dataclasses import dataclass, field

import torch

from data import build_dataset, make_loader
from data.holdout import split_holdout
from models import build_model, masked_layers
from evaluation import selection
from trainers import lottery, pruning, ss  # noqa: F401  (lottery, ss: register --trainer lottery / ss)
from trainers.checkpoint_config import apply_checkpoint_structure
from evaluation.evaluate import EVAL_ATTACKS
from trainers.optim import build_criterion, build_optimizer, check_optimizer
from trainers.resume import (StopFlag, agreed_stop, checkpoint_dict, load_resume, resume_path,  # noqa: F401
                             save, save_initial, try_resume)
from trainers.schedulers import LR_POLICIES, apply_free_imagenet, get_policy
from trainers.state import should_validate
from trainers.tasks import set_trainable, setup_task
from trainers.train import TRAINERS
from evaluation.validation import (evaluate_only, measure, reevaluate_if_changed, results_dict,  # noqa: F401
                                 validate, validate_and_select)
from utils.checkpoint import remove_stale_temporaries
from utils.config import show_progress
from utils.distributed import all_reduce_sum, broadcast_object, init_distributed, select_device, shutdown
from utils.errors import Interrupted, UserError
from utils.eval_checks import check_eval_settings
from utils.run_dir import Run, run_dir_for, setup_logging
from utils.run_guard import choose_run_dir
from utils.seed import resolve_seed, seed_all

log = logging.getLogger("rst")


def run_main(cfg, entry="main"):
    """Entry for main.py / train_full.py; returns the results dict.

    Names, data, model and every checkpoint to load are checked before the run
    directory is created, so a bad invocation leaves no run behind. The folder is
    ``utils.run_guard``'s choice: never one holding another run. The last line on
    stdout is the results as JSON (one line).
    """
    ctx = init_distributed()
    setup_logging(is_main=ctx.is_main)
    try:
        if entry == "train_full":
            cfg.prune_rate = 1.0
        task = "train_full" if entry == "train_full" else cfg.task
        if entry == "main":
            apply_free_imagenet(cfg)
        check_names(cfg)
        if cfg.evaluate:  # k, width, arch, layer types from the checkpoint unless given
            apply_checkpoint_structure(cfg, cfg.pretrained, entry)
        trainer_hook(cfg, "check")(cfg, task, ctx)
        check_eval_settings(cfg, entry)
        # rank 0 decides (the others might see its folder half made)
        where = None if cfg.evaluate else broadcast_object(ctx, choose_run_dir(cfg, task) if ctx.is_main else None)
        if where is not None and where.finished:
            return already_finished(where, ctx)
        if where is not None and where.reason:  # a numbered sibling: say so first
            log.info("run: %s (not %s)", where.dir, where.reason)
        device, data, model = prepare(cfg, ctx)
        if entry == "train_full":
            set_trainable(model, weights=True, scores=False)
        else:
            setup_task(model, cfg, run_dir_for(cfg, task))
        seed_rank(cfg, ctx)
        if cfg.evaluate:
            return report_evaluation(evaluate_only(cfg, ctx, run_dir_for(cfg, task), task, device, data, model), ctx)
        resume = load_resume(cfg, where.dir, model)
        selection.check_same_split(cfg, resume)
        if not where.reason:
            log.info("run: %s", where.dir)
        run = Run(cfg, ctx.is_main, task=task, name=where.name)
        try:
            return print_json(fit(cfg, ctx, run, device, data, model, resume), ctx)
        except KeyboardInterrupt:
            if run.discard_if_unstarted():
                log.warning("interrupted before the first checkpoint: removed %s", run.dir)
            raise
    finally:
        shutdown(ctx)


def report_evaluation(out, ctx):
    """-e's stdout: the original's line, then (last, as for every run) the JSON line."""
    if ctx.is_main:
        robust = "n/a" if out["robust_acc1"] is None else format(out["robust_acc1"], ".2f")
        sys.stdout.write(f"Natural Acc: {out['natural_acc1']:.2f}, Robust Acc: {robust}\n")
    return print_json(out, ctx)


def print_json(out, ctx):
    """The results as one JSON line on stdout (rank 0), for scripts; returns ``out``."""
    if ctx.is_main:
        sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
        sys.stdout.flush()
    return out


def already_finished(where, ctx):
    """A finished run with these settings exists: report it and touch nothing."""
    with open(f"{where.dir}/results.json") as fh:
        out = json.load(fh)
    log.info("already finished with these settings: %s (nothing done; --force runs it again into a new "
             "numbered sibling)", where.dir)
    return print_json(dict(out, already_finished=True, run_dir=where.dir), ctx)


def check_names(cfg):
    """Fail fast on names only looked up later (after the first epoch, for some)."""
    LR_POLICIES.get(cfg.lr_policy)
    TRAINERS.get(cfg.trainer)
    check_optimizer(cfg.optimizer)
    if cfg.attack_type:
        EVAL_ATTACKS.get(cfg.eval_attack)
    if cfg.evaluate and not cfg.pretrained:
        raise UserError("--evaluate needs --pretrained CHECKPOINT")


def trainer_hook(cfg, name):
    """--trainer's optional ``check(cfg, task, ctx)`` (run before the run directory exists)
    or ``prepare(model, cfg)`` (run before the optimiser is built); else a no-op."""
    return getattr(TRAINERS.get(cfg.trainer), name, lambda *args: None)


def prepare(cfg, ctx):
    """Device, dataset and model (identical initial weights on every rank).

    The model is built right after seeding, as the original does (it seeds,
    builds the model, then the data), so its random draws are the original's.
    Our model needs the dataset's shape, so the data is built first, under the
    same seed, and the seed is set again before the model. Without --seed a fresh
    seed is drawn (the same on every rank) and recorded in ``cfg.seed``.
    """
    device = select_device(cfg, ctx)
    resolve_seed(cfg, lambda seed: all_reduce_sum(ctx, [seed if ctx.is_main else 0], device)[0])
    seed_all(cfg.seed)
    data = split_holdout(build_dataset(cfg), cfg.val_split)
    info = data.info
    seed_all(cfg.seed)
    model = build_model(cfg, cfg.num_classes or info.num_classes, info.in_channels, info.image_size,
                        info.mean, info.std)
    model = model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return device, data, model


def seed_rank(cfg, ctx):
    """Ranks > 0 get their own attack starts and augmentation (seed + rank), after the task
    setup so that ft_reinit's draws are rank 0's; rank 0 continues the stream that built the
    model, as the original's single process does (ft_reinit's new weights come from it)."""
    if ctx.rank:
        seed_all(cfg.seed + ctx.rank)


def compile_model(model, recompile_limit=64, **compile_kwargs):
    """``torch.compile`` for --compile. Masked layers run eagerly (their mask caches are
    Python state), so the graph breaks around each one and a block's code is compiled
    once per layer shape and mode (attack, training, evaluation, evaluation attack):
    allow that many variants per code object rather than falling back to eager."""
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, recompile_limit)
    return torch.compile(model, **compile_kwargs)


def wrap_parallel(cfg, ctx, model, device):
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if device.type == "cuda" and cfg.multigpu and len(cfg.multigpu) > 1:
        return torch.nn.DataParallel(model, device_ids=cfg.multigpu)
    return model


@dataclass
class Session:
    """Everything one training run's epochs share."""
    cfg: object
    ctx: object
    run: Run
    device: torch.device
    data: object
    model: torch.nn.Module
    net: torch.nn.Module = None       # the model as trained (DDP/DataParallel/compiled)
    optimizer: object = None
    set_lr: object = None
    criterion: object = None
    scaler: object = None
    progress: bool = False            # per-batch bars on stderr (rank 0)
    extra: dict = field(default_factory=dict)  # loop state saved with checkpoints


def start_session(cfg, ctx, run, device, data, model, resume):
    """Optimiser, criterion, resumed state, initial checkpoint and the wrapped model."""
    s = Session(cfg, ctx, run, device, data, model, progress=show_progress(cfg) and ctx.is_main)
    trainer_hook(cfg, "prepare")(model, cfg)
    s.optimizer = build_optimizer(cfg, model)
    s.set_lr, s.criterion = get_policy(s.optimizer, cfg), build_criterion(cfg)
    state = try_resume(cfg, resume, model, s.optimizer, s.extra, ctx)
    reevaluate_if_changed(s, state, resume)
    if run.is_main:
        remove_stale_temporaries(run.ckpt_dir)
        if resume is None and run.task != "train_full":
            save_initial(s, state)
    pruning.setup(model, cfg, s.extra, train_full=run.task == "train_full")
    if cfg.amp == "fp16" and device.type == "cuda":
        s.scaler = torch.amp.GradScaler("cuda")
    # torch.compile inside DDP: unwrap(s.net) is then the compiled module, which the
    # training attacks run too (they are 7/8 of a PGD-7 step's passes).
    s.net = wrap_parallel(cfg, ctx, compile_model(model) if cfg.compile else model, device)
    for m in masked_layers(model):
        m.clear_cache()  # DDP's start-up broadcast rewrites parameters in place
    return s, state


def fit(cfg, ctx, run, device, data, model, resume=None):
    """Train ``cfg.epochs`` epochs; ``resume`` is ``load_resume``'s (path, checkpoint).

    On SIGTERM or Ctrl-C (SIGINT) the loop saves a checkpoint at the batch boundary
    (mid-epoch if need be) and writes no results.json; after SIGTERM it returns with
    ``interrupted`` set (the process exits 0, as SLURM expects), after Ctrl-C it raises
    ``Interrupted`` (exit 130). Either continues with --automatic_resume.
    """
    with StopFlag() as stop:  # from here a signal saves a checkpoint instead of killing the run
        s, state = start_session(cfg, ctx, run, device, data, model, resume)
        stopped = False
        while state.epoch < cfg.epochs and not stopped:
            stopped = run_epoch(s, state, stop)
    out = results_dict(cfg, run, state, state.epoch)
    if stopped and state.epoch < cfg.epochs:
        log.info("%s: checkpoint saved at epoch %d batch %d in %s; continue with --automatic_resume",
                 stop.signal, state.epoch, state.batches_done, run.dir)
        run.close()
        if stop.signal == "SIGINT":
            raise Interrupted(f"Ctrl-C: {run.dir} continues with --automatic_resume")
        return dict(out, interrupted=True)
    run.write_json("results.json", out)
    log.info("done: %d epochs in %s; results: %s", state.epoch, run.dir, run.path("results.json"))
    run.close()
    return out


def run_epoch(s, state, stop):
    """Train (from ``state.batches_done`` on), maybe validate, checkpoint; log one line.

    Returns True if stopped by a signal, after saving: mid-epoch, the checkpoint
    records the batches done and their metric sums, and holds the RNG state as
    it is after the last of them, so a resume continues bit-for-bit.
    """
    cfg, ctx, epoch, start = s.cfg, s.ctx, state.epoch, time.time()
    stop = agreed_stop(stop, ctx, s.device)
    train_full = s.run.task == "train_full"  # no discarding, progressive k or early val_every there
    if cfg.progressive_prune and cfg.discard_mode and not train_full:
        pruning.set_progressive_k(s.model, cfg, epoch)
    lr = s.set_lr(epoch)
    loader = make_loader(s.data.train, cfg.batch_size, True, cfg, epoch=epoch, rank=ctx.rank,
                         world_size=ctx.world_size, seed=cfg.seed or 0, skip_batches=state.batches_done)
    train = TRAINERS.get(cfg.trainer)(s.net, loader, s.optimizer, s.criterion, cfg, s.device, epoch, ctx=ctx,
                                      scaler=s.scaler, state=s.extra, should_stop=stop, progress=s.progress,
                                      resume_from=state.mid_epoch())
    if train.pop("interrupted"):
        state.batches_done, state.epoch_totals = train["batches_done"], train["totals"]
        state.train_seconds += time.time() - start
        save(s, state, best=False)
        return True
    if cfg.discard_mode and not train_full:
        pruning.discard_low_scores(s.model, pruning.discard_fraction(cfg, epoch), s.extra)
    last = epoch + 1 == cfg.epochs
    is_best, val_text = False, "not validated"
    # --val_rule every: train_full.py validates on main.py's epochs (figures compare dense and tickets alike)
    early_rule = train_full and getattr(cfg, "val_rule", "original") == "original"
    if should_validate(epoch, cfg.epochs, cfg.val_every, early_rule):
        is_best, val_text = validate_and_select(s, state, epoch, train, lr, last)
    s.run.scalars(epoch, {"train/loss": train["loss"], "train/acc1": train["acc1"], "lr": lr})
    state.end_epoch()
    state.train_seconds += time.time() - start
    log.info("epoch %d of %d: lr %.4g train loss %.4f acc %.2f | %s | %.1f s", epoch, cfg.epochs, lr,
             train["loss"], train["acc1"], val_text, time.time() - start)
    stopping = stop()  # a signal during validation: save now, whatever --save_every says
    every = cfg.save_every if cfg.save_every > 0 else 1
    if last or is_best or stopping or state.epoch % every == 0:
        save(s, state, best=is_best)
    return stopping
