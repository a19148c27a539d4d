"""Run directory layout, logging, settings, TensorBoard and results.json.

``<log-dir or runs>/<config stem>/<name>/prune_rate=<k>/<task>/[width_mult=<w>/]``
(the original's layout) holds log.txt, settings.txt, logs/ (TensorBoard),
checkpoints/ and results.json. Only the main rank writes anything.
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


def prune_rate_dir(cfg, prune_rate=None, name=None):
    """``<root>/<config stem>/<name>/prune_rate=<k>``: the folder every task of one k shares.

    ``<name>`` is --name, else the preset's ``name`` (``baseline`` in every shipped
    preset), else ``default``; without --config the stem is ``no_config`` (the
    original refuses to run without both).
    """
    stem = os.path.splitext(os.path.basename(cfg.config))[0] if cfg.config else "no_config"
    k = cfg.prune_rate if prune_rate is None else prune_rate
    return os.path.join(run_root(cfg), stem, name or cfg.name or "default", f"prune_rate={k}")


def run_dir_for(cfg, task=None, prune_rate=None, name=None):
    """The run directory of ``task`` (default ``cfg.task``): the single place run paths are made.

    As in the original: k is written as Python prints it (``0.1``, ``1.0``), a
    ``width_mult=<w>`` level follows the task folder when --width-mult is not 1, and
    train_full.py (``task="train_full"``, k forced to 1.0) runs in the folder of
    ``--task`` (``search`` unless given), since the original names that folder
    after ``args.task`` for both entry points. ``name`` replaces --name (a numbered
    sibling chosen by ``utils.run_guard``).
    """
    folder = cfg.task if task == "train_full" else (task or cfg.task)
    path = os.path.join(prune_rate_dir(cfg, prune_rate, name), folder)
    width = getattr(cfg, "width_mult", 1.0)
    if float(width) != 1.0:
        path = os.path.join(path, f"width_mult={width}")
    return path


def config_dict(cfg):
    """The resolved config as plain types (stored in settings.txt and checkpoints)."""
    return {k: v for k, v in sorted(vars(cfg).items()) if k not in CONFIG_KEYS_SKIPPED}


class Run:
    """Paths and writers of one run; a no-op writer on non-main ranks."""

    def __init__(self, cfg, is_main=True, task=None, name=None):
        """``name``: the numbered sibling of --name that ``utils.run_guard`` chose (default --name)."""
        self.cfg = cfg
        self.task = task or cfg.task
        self.name = name or cfg.name or "default"
        self.dir = run_dir_for(cfg, self.task, name=name)
        self.ckpt_dir = os.path.join(self.dir, "checkpoints")
        self.is_main = is_main
        self._writer = None
        self._created = _missing_parents(self.dir) if is_main else []
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
            self._writer = None
        if self.is_main:
            dest = os.path.join(run_root(self.cfg), "logs", f"log_{self.name}", f"log_{self.task}.txt")
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _detach_file_log(self.path("log.txt"))  # a later run in this process logs elsewhere
            shutil.copyfile(self.path("log.txt"), dest)

    def discard_if_unstarted(self):
        """Remove the folders this run created if it holds no checkpoint to continue from
        (interrupted before its first one): no half-made run is left behind."""
        if not self.is_main or os.path.isfile(self.ckpt("model_latest.pth")) or not self._created:
            return False
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        _detach_file_log(self.path("log.txt"))
        shutil.rmtree(self._created[0], ignore_errors=True)
        return True


def _missing_parents(path):
    """``path`` and its parents that do not exist yet, outermost first."""
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.insert(0, path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _detach_file_log(path):
    root = logging.getLogger("rst")
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler) and os.path.abspath(h.baseFilename) == os.path.abspath(path):
            root.removeHandler(h)
            h.close()


def setup_logging(level=logging.INFO, is_main=True):
    """Console logging for the entry points (rank 0 only); call once."""
    root = logging.getLogger("rst")
    root.setLevel(level if is_main else logging.WARNING)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        h = _BarSafeHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    root.propagate = False


class _BarSafeHandler(logging.StreamHandler):
    """Console log lines that do not tear a progress bar: tqdm.write clears the bars, writes
    the line and redraws them (a plain write when no bar is shown)."""

    def emit(self, record):
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001  (logging's own contract: report, never raise)
            self.handleError(record)


def _attach_file_log(path):
    root = logging.getLogger("rst")
    for h in list(root.handlers):
        if isinstance(h, logging.FileHandler):
            root.removeHandler(h)
            h.close()
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    root.addHandler(fh)
