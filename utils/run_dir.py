"""Run directory layout, logging, settings, TensorBoard and results.json.

``<log-dir or runs>/<config stem>/<name>/prune_rate=<k>/<task>/`` holds log.txt,
settings.txt, logs/ (TensorBoard), checkpoints/ and results.json. Only the main
rank writes anything.
"""
import json
import logging
import os
import shutil
import sys

log = logging.getLogger("rst")
CONFIG_KEYS_SKIPPED = ("given",)


def run_root(cfg):
    return cfg.log_dir or "runs"


def run_dir_for(cfg, task=None, prune_rate=None):
    stem = os.path.splitext(os.path.basename(cfg.config))[0] if cfg.config else "no_config"
    k = cfg.prune_rate if prune_rate is None else prune_rate
    return os.path.join(run_root(cfg), stem, cfg.name or "default", f"prune_rate={k}", task or cfg.task)


def config_dict(cfg):
    """The resolved config as plain types (stored in settings.txt and checkpoints)."""
    return {k: v for k, v in sorted(vars(cfg).items()) if k not in CONFIG_KEYS_SKIPPED}


class Run:
    """Paths and writers of one run; a no-op writer on non-main ranks."""

    def __init__(self, cfg, is_main=True, task=None):
        self.cfg = cfg
        self.task = task or cfg.task
        self.dir = run_dir_for(cfg, self.task)
        self.ckpt_dir = os.path.join(self.dir, "checkpoints")
        self.is_main = is_main
        self._writer = None
        if is_main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
            _attach_file_log(os.path.join(self.dir, "log.txt"))
            with open(os.path.join(self.dir, "settings.txt"), "w") as fh:
                for k, v in config_dict(cfg).items():
                    fh.write(f"{k}: {v}\n")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def ckpt(self, name):
        return os.path.join(self.ckpt_dir, name)

    def scalars(self, epoch, values):
        """TensorBoard scalars (None values skipped)."""
        if not self.is_main:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(self.path("logs"))
        for tag, v in values.items():
            if v is not None:
                self._writer.add_scalar(tag, v, epoch)
        self._writer.flush()

    def write_json(self, name, data):
        if not self.is_main:
            return
        tmp = self.path(f".{name}.tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, self.path(name))

    def close(self):
        if self._writer is not None:
            self._writer.close()
        if self.is_main:
            dest = os.path.join(run_root(self.cfg), "logs", f"log_{self.cfg.name or 'default'}",
                                f"log_{self.task}.txt")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(self.path("log.txt"), dest)


def setup_logging(level=logging.INFO, is_main=True):
    """Console logging for the entry points (rank 0 only); call once."""
    root = logging.getLogger("rst")
    root.setLevel(level if is_main else logging.WARNING)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.propagate = False


def _attach_file_log(path):
    root = logging.getLogger("rst")
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    root.addHandler(fh)
