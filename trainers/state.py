"""What a checkpoint holds beyond the model, and the model selection rule."""
from dataclasses import asdict, dataclass, field


@dataclass
class TrainState:
    epoch: int = 0                      # next epoch to run
    best_acc1: float = -1.0             # robust top-1 if an attack is set, else natural
    best_acc5: float = -1.0
    best_train_acc1: float = 0.0
    best_train_acc5: float = 0.0
    natural_acc1_at_best_robustness: float = None
    curr_acc1: float = None             # last validation (robust if attack set)
    curr_acc5: float = None
    natural_acc1: float = None          # last validation, natural
    robust_acc1: float = None           # last validation, PGD-20
    train_seconds: float = 0.0
    history: list = field(default_factory=list)

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
        if chosen["acc1"] > self.best_acc1:
            self.best_acc1, self.best_acc5 = chosen["acc1"], chosen["acc5"]
            self.natural_acc1_at_best_robustness = natural["acc1"]
            return True
        return False

    def as_dict(self):
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt):
        names = cls.__dataclass_fields__
        return cls(**{k: ckpt[k] for k in names if k in ckpt})
