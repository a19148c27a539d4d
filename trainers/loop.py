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
from data.holdout import split_holdout
from models import build_model, masked_layers
from trainers import lottery, pruning, selection, ss  # noqa: F401  (lottery, ss: register --trainer lottery / ss)
from trainers.checkpoint_config import apply_checkpoint_structure
from trainers.evaluate import EVAL_ATTACKS, evaluate
from trainers.optim import build_criterion, build_optimizer, check_optimizer
from trainers.schedulers import LR_POLICIES, apply_free_imagenet, get_policy
from trainers.state import TrainState, same_data_order, should_validate
from trainers.tasks import set_trainable, setup_task
from trainers.train import TRAINERS, unwrap
from utils.checkpoint import (atomic_save, check_arch, extract_state_dict, load_checkpoint, load_model_state,
                              original_optimizer_state, remove_stale_temporaries)
from utils.distributed import all_reduce_sum, barrier, broadcast_buffers, init_distributed, select_device, shutdown
from utils.errors import UserError
from utils.eval_checks import check_eval_settings
from utils.provenance import main_protocol, protocol_changes
from utils.run_dir import Run, config_dict, run_dir_for, setup_logging
from utils.seed import gather_rng_states, get_rng_state, rng_for_rank, seed_all, set_rng_state

log = logging.getLogger("rst")


def run_main(cfg, entry="main"):
    """Entry for main.py / train_full.py; returns the results dict.

    Names, data, model and every checkpoint to load are checked before the run
    directory is created, so a bad invocation leaves no run behind.
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
        device, data, model = prepare(cfg, ctx)
        if entry == "train_full":
            set_trainable(model, weights=True, scores=False)
        else:
            setup_task(model, cfg, run_dir_for(cfg, task))
        resume = None if cfg.evaluate else load_resume(cfg, run_dir_for(cfg, task), model)
        selection.check_same_split(cfg, resume)
        run = Run(cfg, ctx.is_main, task=task)
        if cfg.evaluate:
            return evaluate_only(cfg, ctx, run, device, data, model)
        return fit(cfg, ctx, run, device, data, model, resume)
    finally:
        shutdown(ctx)


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
    same seed, and the seed is set again before the model.
    """
    device = select_device(cfg, ctx)
    seed_all(cfg.seed)
    data = split_holdout(build_dataset(cfg), cfg.val_split)
    info = data.info
    seed_all(cfg.seed)
    model = build_model(cfg, cfg.num_classes or info.num_classes, info.in_channels, info.image_size,
                        info.mean, info.std)
    model = model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.seed is not None:
        seed_all(cfg.seed + ctx.rank)  # per-rank attack starts and augmentation
    return device, data, model


def validate(cfg, ctx, device, data, model, progress=False, dataset=None):
    """Natural and (if an attack type is set, or asked) robust metrics on ``dataset`` (default: the val set)."""
    dataset = data.val if dataset is None else dataset
    loader = make_loader(subset(dataset, cfg.n_eval), cfg.test_batch_size, False, cfg,
                         rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed or 0)
    # The bare module on every rank (no DDP collectives: val shards may differ by one
    # batch), with rank 0's BatchNorm statistics, the ones its checkpoint holds.
    model = unwrap(model)
    broadcast_buffers(ctx, model)
    natural = evaluate(model, loader, device, amp=cfg.amp, ctx=ctx, desc="natural", progress=progress,
                       channels_last=cfg.channels_last)
    robust = None
    if cfg.attack_type:
        attack = EVAL_ATTACKS.get(cfg.eval_attack)(cfg)
        robust = evaluate(model, loader, device, attack=attack, amp=cfg.amp, ctx=ctx,
                          desc=cfg.eval_attack, progress=progress, channels_last=cfg.channels_last)
    return natural, robust


def results_dict(cfg, run, state, epochs_done):
    """results.json: accuracies of the last epoch and of the selected one (see trainers.selection)
    and the protocol that measured them."""
    out = {"task": run.task, "arch": cfg.arch, "set": cfg.set, "prune_rate": cfg.prune_rate,
           "epochs_done": epochs_done}
    out.update(selection.result_fields(cfg, state))
    out.update(train_seconds=round(state.train_seconds, 3), eval_protocol=main_protocol(cfg))
    return out


def evaluate_only(cfg, ctx, run, device, data, model):
    """--evaluate (``check_names`` has already required --pretrained)."""
    natural, robust = validate(cfg, ctx, device, data, model, progress=True)
    state = TrainState(natural_acc1=natural["acc1"], robust_acc1=robust["acc1"] if robust else None)
    out = results_dict(cfg, run, state, 0)
    out.update(best_acc1=None, best_epoch=None, best_natural_acc1=None, best_robust_acc1=None,
               natural_acc1_at_best_robustness=None, selection=None)
    out["eval_attack"] = cfg.eval_attack if robust else None
    run.write_json("results.json", out)
    log.info("Natural Acc: %.2f, Robust Acc: %s", natural["acc1"],
             "n/a" if robust is None else f"{robust['acc1']:.2f}")
    run.close()
    return out


def measure(s, model):
    """``selection.select``'s validation: (natural, robust) of ``model`` (default: the one
    given here) on ``dataset`` (default: the test split)."""
    def measure_one(model=model, dataset=None):
        return validate(s.cfg, s.ctx, s.device, s.data, model, dataset=dataset)
    return measure_one


def validate_and_select(s, state, epoch, train, lr, last):
    """Validation of one epoch: selection split, test split where needed, log and scalars."""
    holdout = getattr(s.data, "holdout", None)
    natural, robust, is_best, test = selection.select(measure(s, s.net), state, epoch, train, holdout, last)
    split = "test" if holdout is None else "holdout"
    log.info("epoch %d lr %.4g train %.2f %s natural %.2f robust %s%s", epoch, lr, train["acc1"], split,
             natural["acc1"], "n/a" if robust is None else f"{robust['acc1']:.2f}", " (best)" if is_best else "")
    values = {f"{split}/natural_acc1": natural["acc1"], f"{split}/loss": natural["loss"],
              f"{split}/robust_acc1": robust["acc1"] if robust else None}
    if holdout is not None and test is not None:
        log.info("epoch %d test natural %.2f robust %s", epoch, test["natural_acc1"],
                 "n/a" if test["robust_acc1"] is None else f"{test['robust_acc1']:.2f}")
        values.update({"test/natural_acc1": test["natural_acc1"], "test/robust_acc1": test["robust_acc1"]})
    s.run.scalars(epoch, values)
    return is_best


def reevaluate_if_changed(s, state, resume):
    """A resumed (or finished) run whose evaluation protocol differs from the checkpoint's
    re-measures the latest and the best model instead of copying their numbers."""
    saved = resume[1].get("config") if resume else None
    if resume and protocol_changes(saved, s.cfg):
        best = selection.load_best(unwrap(s.model), s.run.ckpt("model_best.pth"), strict=not s.cfg.not_strict)
        selection.reevaluate(measure(s, s.model), state, s.cfg, saved, getattr(s.data, "holdout", None), best,
                             s.device)


def checkpoint_dict(cfg, model, optimizer, state, extra):
    """Everything to continue bit-for-bit: model, optimiser, position (epoch, batches_done;
    the LR is a function of the epoch), metrics, RNG states, config (whose seed with the
    epoch fixes the data order) and ``extra`` (the free attack's delta)."""
    d = state.as_dict()
    d.update(arch=cfg.arch, state_dict=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
             prune_rate=float(cfg.prune_rate), task=cfg.task, config=config_dict(cfg), rng=get_rng_state(),
             normalization={"mean": unwrap(model).normalize.mean.flatten().tolist(),
                            "std": unwrap(model).normalize.std.flatten().tolist()})
    d.update(extra)
    return d


def resume_path(cfg, run_dir):
    if cfg.resume:
        return cfg.resume
    if cfg.automatic_resume:
        path = os.path.join(run_dir, "checkpoints", "model_latest.pth")
        return path if os.path.isfile(path) else None
    return None


def load_resume(cfg, run_dir, model):
    """Load the checkpoint to resume from (if asked) into ``model``; returns (path, ckpt) or None.

    Runs before the run directory exists, so a missing, corrupt or mismatched
    file fails without leaving anything behind.
    """
    path = resume_path(cfg, run_dir)
    if not path:
        return None
    try:
        ckpt = load_checkpoint(path)
    except UserError as exc:
        if cfg.resume:
            raise
        raise UserError(f"--automatic_resume: {exc}, or delete it to start this run over") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"'{path}' is not a training checkpoint (a dict with state_dict, epoch, ...)")
    check_arch(ckpt, cfg.arch, path)
    load_model_state(unwrap(model), extract_state_dict(ckpt, path), strict=not cfg.not_strict, path=path)
    TrainState.from_checkpoint(ckpt, path)  # validates the loop position now
    return path, ckpt


def try_resume(cfg, resume, model, optimizer, extra, ctx=None):
    """Optimiser, metrics, RNG and loop state from ``load_resume``'s checkpoint."""
    if not resume:
        return TrainState()
    path, ckpt = resume
    saved = ckpt.get("optimizer")
    if "config" not in ckpt and isinstance(saved, dict):  # the original's: its group order, an empty BN group
        saved = original_optimizer_state(saved, unwrap(model), optimizer, path)
    if saved is not None:
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"'{path}': optimizer state does not match this run ({exc}); "
                            "check --optimizer and --task, or pass --pretrained instead of --resume") from None
    set_rng_state(rng_for_rank(ckpt, ctx) if ctx is not None else ckpt.get("rng"), path)
    for key in ("free_delta", pruning.KEY):  # loop state: free perturbation, discarded score sets
        if ckpt.get(key) is not None:
            extra[key] = ckpt[key]
    for m in masked_layers(unwrap(model)):
        m.clear_cache()
    state = TrainState.from_checkpoint(ckpt, path)
    if state.batches_done and not same_data_order(ckpt, cfg, ctx.world_size if ctx else 1):
        log.warning("%s: --seed, --batch_size, the data or the process count changed, so epoch %d "
                    "restarts from its first batch", path, state.epoch)
        state.batches_done, state.epoch_totals = 0, None
    if cfg.start_epoch is not None:
        state.epoch, state.batches_done, state.epoch_totals = cfg.start_epoch, 0, None
    log.info("resumed from %s at epoch %d%s", path, state.epoch,
             f" batch {state.batches_done}" if state.batches_done else "")
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
    extra: dict = field(default_factory=dict)  # loop state saved with checkpoints


def fit(cfg, ctx, run, device, data, model, resume=None):
    """Train ``cfg.epochs`` epochs; ``resume`` is ``load_resume``'s (path, checkpoint).

    On SIGTERM the loop saves a checkpoint (mid-epoch if need be), writes no
    results.json and returns with ``interrupted`` set; the process exits 0.
    """
    s = Session(cfg, ctx, run, device, data, model)
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
    stopped = False
    with StopFlag() as stop:
        while state.epoch < cfg.epochs and not stopped:
            stopped = run_epoch(s, state, stop)
    out = results_dict(cfg, run, state, state.epoch)
    if stopped and state.epoch < cfg.epochs:
        log.info("SIGTERM: checkpoint saved at epoch %d batch %d; continue with --automatic_resume",
                 state.epoch, state.batches_done)
        out["interrupted"] = True
    else:
        run.write_json("results.json", out)
        log.info("done: %s", out)
    run.close()
    return out


def save_initial(s, state):
    """checkpoints/initial.state: the network before training (weights and scores), as the
    original's main.py writes it; a resumed run keeps the one its start wrote."""
    atomic_save(checkpoint_dict(s.cfg, s.model, s.optimizer, state, s.extra), s.run.ckpt("initial.state"))


def run_epoch(s, state, stop):
    """Train (from ``state.batches_done`` on), maybe validate, checkpoint.

    Returns True if stopped by SIGTERM, after saving: mid-epoch, the checkpoint
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
                                      scaler=s.scaler, state=s.extra, should_stop=stop,
                                      resume_from=state.mid_epoch())
    if train.pop("interrupted"):
        state.batches_done, state.epoch_totals = train["batches_done"], train["totals"]
        state.train_seconds += time.time() - start
        save(s, state, best=False)
        return True
    if cfg.discard_mode and not train_full:
        pruning.discard_low_scores(s.model, pruning.discard_fraction(cfg, epoch), s.extra)
    last = epoch + 1 == cfg.epochs
    is_best = False
    if should_validate(epoch, cfg.epochs, cfg.val_every, train_full):
        is_best = validate_and_select(s, state, epoch, train, lr, last)
    s.run.scalars(epoch, {"train/loss": train["loss"], "train/acc1": train["acc1"], "lr": lr})
    state.end_epoch()
    state.train_seconds += time.time() - start
    stopping = stop()  # SIGTERM during validation: save now, whatever --save_every says
    every = cfg.save_every if cfg.save_every > 0 else 1
    if last or is_best or stopping or state.epoch % every == 0:
        save(s, state, best=is_best)
    return stopping


def agreed_stop(stop, ctx, device):
    """SIGTERM can reach ranks at different batches: all stop once any has it (a tiny all-reduce)."""
    if not ctx.enabled:
        return stop
    return lambda: all_reduce_sum(ctx, [float(stop())], device)[0] > 0


def save(s, state, best):
    """Atomically write model_latest (and model_best); rank 0 writes, every rank must call."""
    rngs = gather_rng_states(s.ctx)  # collective: each rank's stream, for a DDP resume
    if s.run.is_main:
        extra = dict(s.extra, world_size=s.ctx.world_size, rng_ranks=rngs) if s.ctx.enabled else s.extra
        ckpt = checkpoint_dict(s.cfg, s.model, s.optimizer, state, extra)
        if best:  # best first: a kill between the two leaves latest older, so the epoch re-runs
            atomic_save(ckpt, s.run.ckpt("model_best.pth"))
        atomic_save(ckpt, s.run.ckpt("model_latest.pth"))
        log.info("checkpoint saved: %d epochs done%s%s", state.epoch,
                 f" + {state.batches_done} batches" if state.batches_done else "", " (best)" if best else "")
    barrier(s.ctx)
