"""What a checkpoint holds beyond the model, when to validate, and the model selection rule.

Position in training: ``epoch`` is the epoch to run next, and ``batches_done``
how many of its batches are already trained (non-zero only in a checkpoint
written on SIGTERM mid-epoch); ``epoch_totals`` are those batches' summed
[examples, loss, top-1 correct, top-5 correct] so the epoch's metrics come out
as if it had never stopped. The data order of any epoch is a function of
(--seed, epoch), both stored, so a resumed loader skips exactly the done batches.
"""
from dataclasses import asdict, dataclass, field

from utils.errors import UserError


@dataclass
class TrainState:
    epoch: int = 0                      # next epoch to run (or the one in progress)
    batches_done: int = 0               # batches of `epoch` already trained (SIGTERM checkpoint)
    epoch_totals: list = None           # their summed [n, loss, correct@1, correct@5] over all ranks
    best_acc1: float = -1.0             # robust top-1 if an attack is set, else natural
    best_acc5: float = -1.0             # highest top-5 of any validation (not the best epoch's)
    best_train_acc1: float = 0.0
    best_train_acc5: float = 0.0
    natural_acc1_at_best_robustness: float = None
    curr_acc1: float = None             # last validation (robust if attack set)
    curr_acc5: float = None
    natural_acc1: float = None          # last validation, natural
    robust_acc1: float = None           # last validation, PGD-20
    train_seconds: float = 0.0
    history: list = field(default_factory=list)
    best_epoch: int = None              # 0-based epoch of model_best.pth
    test_at_best: dict = None           # test-split {natural_acc1, robust_acc1} of that epoch (evaluation.selection)
    last_test: dict = None              # the same for the last epoch

    def record(self, epoch, train, natural, robust):
        """Update metrics after a validation; returns True if this epoch is the new best."""
        self.best_train_acc1 = max(self.best_train_acc1, train["acc1"])
        self.best_train_acc5 = max(self.best_train_acc5, train["acc5"])
        self.natural_acc1 = natural["acc1"]
        self.robust_acc1 = robust["acc1"] if robust else None
        chosen = robust or natural
        self.curr_acc1, self.curr_acc5 = chosen["acc1"], chosen["acc5"]
        self.history.append({"epoch": epoch, "train_acc1": train["acc1"], "natural_acc1": natural["acc1"],
                             "robust_acc1": self.robust_acc1})
        self.best_acc5 = max(self.best_acc5, chosen["acc5"])  # running maximum, as in the original
        if chosen["acc1"] > self.best_acc1:
            self.best_acc1 = chosen["acc1"]
            self.natural_acc1_at_best_robustness = natural["acc1"]
            return True
        return False

    def mid_epoch(self):
        """Where to continue the current epoch: None at an epoch boundary."""
        if not self.batches_done:
            return None
        return {"batches": self.batches_done, "totals": self.epoch_totals}

    def end_epoch(self):
        self.epoch += 1
        self.batches_done, self.epoch_totals = 0, None

    def as_dict(self):
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt, path="checkpoint"):
        names = cls.__dataclass_fields__
        state = cls(**{k: ckpt[k] for k in names if k in ckpt})
        if not isinstance(state.epoch, int) or state.epoch < 0 or not isinstance(state.batches_done, int) \
                or state.batches_done < 0:
            raise UserError(f"'{path}': epoch/batches_done must be non-negative integers, got "
                            f"{state.epoch!r}/{state.batches_done!r}; the file is damaged")
        if state.batches_done and (not isinstance(state.epoch_totals, list) or len(state.epoch_totals) != 4):
            raise UserError(f"'{path}': a mid-epoch checkpoint without its epoch_totals; the file is damaged")
        return state


TRAIN_FULL_EARLY_EPOCHS = 60   # train_full.py validates every 10 epochs while epoch <= 60
TRAIN_FULL_EARLY_INTERVAL = 10


def should_validate(epoch, epochs, val_every, train_full=False):
    """Whether the original validates (and may save model_best) after 0-based ``epoch``.

    main.py: ``epoch % val_every == 0`` or the last epoch. train_full.py: the
    interval is 10 while epoch <= 60, then val_every; the same last-epoch rule.
    (val_every < 1, a ZeroDivisionError in the original, counts as 1.)
    """
    every = max(1, val_every)
    if train_full and epoch <= TRAIN_FULL_EARLY_EPOCHS:
        every = TRAIN_FULL_EARLY_INTERVAL
    return epoch % every == 0 or epoch == epochs - 1


DATA_ORDER_KEYS = ("seed", "batch_size", "low_data", "one_batch", "set")  # what fixes an epoch's batches


def same_data_order(ckpt, cfg, world_size):
    """True if ``cfg`` (and the process count) give the batches the checkpoint's run had.

    Only then can a mid-epoch checkpoint skip its done batches; otherwise the
    epoch has to restart from its first batch.
    """
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    same_config = all(saved.get(k) == getattr(cfg, k, None) for k in DATA_ORDER_KEYS)
    return same_config and ckpt.get("world_size", 1) == world_size
