"""Wiring: config -> data, model, task, optimiser -> epochs -> checkpoints and results.

Loops live in ``trainers.train`` / ``trainers.evaluate``; this module only
connects them. Only rank 0 writes files.
"""
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import torch

from data import build_dataset, make_loader, subset
from models import build_model, masked_layers, set_model_prune_rate
from trainers import pruning
from trainers.evaluate import EVAL_ATTACKS, evaluate
from trainers.optim import build_criterion, build_optimizer
from trainers.schedulers import get_policy
from trainers.state import TrainState
from trainers.tasks import set_trainable, setup_task
from trainers.train import TRAINERS, unwrap
from utils.checkpoint import atomic_save, check_arch, extract_state_dict, load_checkpoint, load_model_state
from utils.distributed import barrier, init_distributed, select_device, shutdown
from utils.errors import UserError
from utils.run_dir import Run, config_dict, setup_logging
from utils.seed import get_rng_state, seed_all, set_rng_state

log = logging.getLogger("rst")


def run_main(cfg, entry="main"):
    """Entry for main.py / train_full.py; returns the results dict."""
    ctx = init_distributed()
    setup_logging(is_main=ctx.is_main)
    try:
        if entry == "train_full":
            cfg.prune_rate = 1.0
        run = Run(cfg, ctx.is_main, task="train_full" if entry == "train_full" else cfg.task)
        device, data, model = prepare(cfg, ctx)
        if entry == "train_full":
            set_trainable(model, weights=True, scores=False)
        else:
            setup_task(model, cfg, run.dir)
        if cfg.evaluate:
            return evaluate_only(cfg, ctx, run, device, data, model)
        return fit(cfg, ctx, run, device, data, model)
    finally:
        shutdown(ctx)


def prepare(cfg, ctx):
    """Device, dataset and model (identical initial weights on every rank)."""
    device = select_device(cfg, ctx)
    seed_all(cfg.seed)
    data = build_dataset(cfg)
    info = data.info
    model = build_model(cfg, cfg.num_classes or info.num_classes, info.in_channels, info.image_size,
                        info.mean, info.std)
    model = model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.seed is not None:
        seed_all(cfg.seed + ctx.rank)  # per-rank attack starts and augmentation
    return device, data, model


def validate(cfg, ctx, device, data, model, progress=False):
    """Natural and (if an attack type is set, or asked) robust metrics on the val set."""
    loader = make_loader(subset(data.val, cfg.n_eval), cfg.test_batch_size, False, cfg,
                         rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed or 0)
    natural = evaluate(model, loader, device, amp=cfg.amp, ctx=ctx, desc="natural", progress=progress)
    robust = None
    if cfg.attack_type:
        attack = EVAL_ATTACKS.get(cfg.eval_attack)(cfg)
        robust = evaluate(unwrap(model), loader, device, attack=attack, amp=cfg.amp, ctx=ctx,
                          desc=cfg.eval_attack, progress=progress)
    return natural, robust


def results_dict(cfg, run, state, epochs_done):
    return {"task": run.task, "arch": cfg.arch, "set": cfg.set, "prune_rate": cfg.prune_rate,
            "epochs_done": epochs_done, "natural_acc1": state.natural_acc1, "robust_acc1": state.robust_acc1,
            "best_acc1": state.best_acc1 if state.best_acc1 >= 0 else None,
            "natural_acc1_at_best_robustness": (state.natural_acc1_at_best_robustness
                                                if cfg.attack_type else None),
            "train_seconds": round(state.train_seconds, 3)}


def evaluate_only(cfg, ctx, run, device, data, model):
    if not cfg.pretrained:
        raise UserError("--evaluate needs --pretrained CHECKPOINT")
    natural, robust = validate(cfg, ctx, device, data, model, progress=True)
    state = TrainState(natural_acc1=natural["acc1"], robust_acc1=robust["acc1"] if robust else None)
    out = results_dict(cfg, run, state, 0)
    out["best_acc1"] = None
    out["eval_attack"] = cfg.eval_attack if robust else None
    run.write_json("results.json", out)
    log.info("Natural Acc: %.2f, Robust Acc: %s", natural["acc1"],
             "n/a" if robust is None else f"{robust['acc1']:.2f}")
    run.close()
    return out


def checkpoint_dict(cfg, model, optimizer, state, extra):
    d = state.as_dict()
    d.update(arch=cfg.arch, state_dict=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
             prune_rate=float(cfg.prune_rate), task=cfg.task, config=config_dict(cfg), rng=get_rng_state(),
             normalization={"mean": unwrap(model).normalize.mean.flatten().tolist(),
                            "std": unwrap(model).normalize.std.flatten().tolist()})
    d.update(extra)
    return d


def resume_path(cfg, run):
    if cfg.resume:
        return cfg.resume
    if cfg.automatic_resume:
        path = run.ckpt("model_latest.pth")
        return path if os.path.isfile(path) else None
    return None


def try_resume(cfg, run, model, optimizer, extra):
    """Load model, optimiser, metrics, RNG and loop state from a checkpoint if asked."""
    path = resume_path(cfg, run)
    if not path:
        return TrainState()
    ckpt = load_checkpoint(path)
    check_arch(ckpt, cfg.arch, path)
    load_model_state(unwrap(model), extract_state_dict(ckpt, path), strict=not cfg.not_strict, path=path)
    if "optimizer" in ckpt:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise UserError(f"'{path}': optimizer state does not match this run ({exc})") from None
    set_rng_state(ckpt.get("rng"))
    if ckpt.get("free_delta") is not None:
        extra["free_delta"] = ckpt["free_delta"]
    for m in masked_layers(unwrap(model)):
        m.clear_cache()
    state = TrainState.from_checkpoint(ckpt)
    if cfg.start_epoch is not None:
        state.epoch = cfg.start_epoch
    log.info("resumed from %s at epoch %d", path, state.epoch)
    return state


class StopFlag:
    """Set by SIGTERM (SLURM pre-emption): the loop saves a checkpoint and exits."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def __call__(self):
        return self.stop


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
    extra: dict = field(default_factory=dict)  # loop state saved with checkpoints


def fit(cfg, ctx, run, device, data, model):
    s = Session(cfg, ctx, run, device, data, model)
    s.optimizer = build_optimizer(cfg, model)
    s.set_lr, s.criterion = get_policy(s.optimizer, cfg), build_criterion(cfg)
    state = try_resume(cfg, run, model, s.optimizer, s.extra)
    if cfg.discard_mode:
        pruning.install_discard_hooks(model)
    if cfg.amp == "fp16" and device.type == "cuda":
        s.scaler = torch.amp.GradScaler("cuda")
    s.net = wrap_parallel(cfg, ctx, model, device)
    if cfg.compile:
        s.net = torch.compile(s.net)
    with StopFlag() as stop:
        while state.epoch < cfg.epochs:
            if run_epoch(s, state, stop):
                log.info("SIGTERM: checkpoint saved at epoch %d, exiting", state.epoch)
                break
    out = results_dict(cfg, run, state, state.epoch)
    run.write_json("results.json", out)
    log.info("done: %s", out)
    run.close()
    return out


def run_epoch(s, state, stop):
    """Train, maybe validate, checkpoint. Returns True if interrupted by SIGTERM."""
    cfg, ctx, epoch, start = s.cfg, s.ctx, state.epoch, time.time()
    if cfg.progressive_prune:
        set_model_prune_rate(s.model, pruning.progressive_k(cfg, epoch))
    lr = s.set_lr(epoch)
    loader = make_loader(s.data.train, cfg.batch_size, True, cfg, epoch=epoch, rank=ctx.rank,
                         world_size=ctx.world_size, seed=cfg.seed or 0)
    train = TRAINERS.get(cfg.trainer)(s.net, loader, s.optimizer, s.criterion, cfg, s.device, epoch, ctx=ctx,
                                      scaler=s.scaler, state=s.extra, should_stop=stop)
    if train.pop("interrupted"):
        state.train_seconds += time.time() - start
        save(s, state, best=False)
        return True
    if cfg.discard_mode:
        pruning.discard_scores(s.model, s.optimizer, pruning.discard_fraction(cfg, epoch))
    last = epoch + 1 == cfg.epochs
    is_best = False
    if (epoch + 1) % max(1, cfg.val_every) == 0 or last:
        natural, robust = validate(cfg, ctx, s.device, s.data, s.net)
        is_best = state.record(epoch, train, natural, robust)
        log.info("epoch %d lr %.4g train %.2f natural %.2f robust %s%s", epoch, lr, train["acc1"],
                 natural["acc1"], "n/a" if robust is None else f"{robust['acc1']:.2f}",
                 " (best)" if is_best else "")
        s.run.scalars(epoch, {"test/natural_acc1": natural["acc1"], "test/loss": natural["loss"],
                              "test/robust_acc1": robust["acc1"] if robust else None})
    s.run.scalars(epoch, {"train/loss": train["loss"], "train/acc1": train["acc1"], "lr": lr})
    state.epoch = epoch + 1
    state.train_seconds += time.time() - start
    if last or is_best or state.epoch % max(1, cfg.save_every) == 0:
        save(s, state, best=is_best)
    return False


def save(s, state, best):
    """Atomically write model_latest (and model_best); rank 0 only."""
    if s.run.is_main:
        ckpt = checkpoint_dict(s.cfg, s.model, s.optimizer, state, s.extra)
        atomic_save(ckpt, s.run.ckpt("model_latest.pth"))
        if best:
            atomic_save(ckpt, s.run.ckpt("model_best.pth"))
    barrier(s.ctx)
