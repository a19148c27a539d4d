"""Checkpoints of a training run: what they hold, loading one to resume, saving, and
stopping cleanly on SIGTERM (SLURM pre-emption) or Ctrl-C.

A checkpoint holds everything to continue bit-for-bit (model, optimiser, loop
position, metrics, RNG states, config); it is written atomically by rank 0.
"""
import logging
import os
import signal

from models import masked_layers
from trainers import pruning
from trainers.state import TrainState, same_data_order
from utils.distributed import unwrap
from utils.checkpoint import (atomic_save, check_arch, extract_state_dict, load_checkpoint, load_model_state,
                              original_optimizer_state)
from utils.distributed import all_reduce_sum, barrier
from utils.errors import UserError
from utils.run_dir import config_dict
from utils.seed import gather_rng_states, get_rng_state, rng_for_rank, set_rng_state

log = logging.getLogger("rst")


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

    Runs before the run directory is created, so a missing, corrupt or mismatched
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
    saved_seed = (ckpt.get("config") or {}).get("seed")
    if getattr(cfg, "seed_drawn", False) and isinstance(saved_seed, int):
        cfg.seed = saved_seed  # no --seed: continue with the resumed run's data order
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
    """Set by SIGTERM (SLURM pre-emption) or SIGINT (Ctrl-C): the loop saves a checkpoint at
    the next batch boundary and stops. ``signal`` names the first one received. A second
    Ctrl-C aborts at once (Python's KeyboardInterrupt), without saving."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            log.warning("%s: saving a checkpoint at the next batch boundary%s", self.signal,
                        " (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else "")
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    @property
    def stop(self):
        return self.signal is not None

    def __call__(self):
        return self.stop


def agreed_stop(stop, ctx, device):
    """A signal can reach ranks at different batches: all stop once any has it (a tiny all-reduce)."""
    if not ctx.enabled:
        return stop
    return lambda: all_reduce_sum(ctx, [float(stop())], device)[0] > 0


def save_initial(s, state):
    """checkpoints/initial.state: the network before training (weights and scores), as the
    original's main.py writes it; a resumed run keeps the one its start wrote."""
    atomic_save(checkpoint_dict(s.cfg, s.model, s.optimizer, state, s.extra), s.run.ckpt("initial.state"))


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
