"""Stand-ins for packages a bare GPU machine may lack (used by bench/gpu_check.sh only).

    python bench/gpu_shims.py DIR [--force yaml,tqdm,sklearn,tensorboard]

For each of yaml, tqdm, sklearn and torch.utils.tensorboard that cannot be
imported (or is named in ``--force``) writes a minimal stand-in into DIR and
prints one line saying so; put DIR first on PYTHONPATH. The stand-ins do only
what this project's runs need: ``yaml.safe_load`` of flat ``key: value``
presets, a pass-through ``tqdm``, a no-op ``SummaryWriter``, and
``sklearn.datasets.load_digits`` returning a SYNTHETIC 10-class set of 1797
8x8 images (class templates plus noise): accuracies measured with it are not
Digits accuracies, only comparable with each other.
"""
import argparse
import importlib
import os
import sys

YAML = '''"""Stand-in for PyYAML (bench/gpu_shims.py): flat key: value mappings only."""


class YAMLError(Exception):
    pass


def _scalar(text):
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text[:1] == "[" and text[-1:] == "]":
        return [_scalar(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\\"":
        return text[1:-1]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def safe_load(stream):
    text = stream.read() if hasattr(stream, "read") else str(stream)
    out = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if line[:1] in (" ", "-", "\\t") or ":" not in line:
            raise YAMLError("unsupported YAML line (stand-in parser): " + raw)
        key, value = line.split(":", 1)
        out[key.strip()] = _scalar(value.strip())
    return out or None
'''

TQDM = '''"""Stand-in for tqdm (bench/gpu_shims.py): iterates, shows nothing."""


class tqdm:
    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self):
        return len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
'''

SKLEARN_DATASETS = '''"""Stand-in for sklearn.datasets.load_digits (bench/gpu_shims.py): SYNTHETIC digits."""
import types

import numpy as np


def load_digits():
    rng = np.random.RandomState(0)
    templates = (rng.rand(10, 8, 8) < 0.3) * 16.0
    target = np.arange(1797) % 10
    images = templates[target] + rng.normal(0.0, 4.0, (1797, 8, 8))
    images = np.clip(np.rint(images), 0, 16)
    return types.SimpleNamespace(images=images, target=target, data=images.reshape(1797, 64))
'''

SITECUSTOMIZE = '''"""bench/gpu_shims.py: a no-op torch.utils.tensorboard (the tensorboard package is missing)."""
import importlib.abc
import importlib.util
import sys
import types


class _NoOpWriter:
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torch.utils.tensorboard":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.SummaryWriter = _NoOpWriter
        return module

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _Finder())
'''

FILES = {
    "yaml": {"yaml/__init__.py": YAML},
    "tqdm": {"tqdm/__init__.py": TQDM},
    "sklearn": {"sklearn/__init__.py": "", "sklearn/datasets/__init__.py": SKLEARN_DATASETS},
    "tensorboard": {"sitecustomize.py": SITECUSTOMIZE},
}
PROBE = {"yaml": "yaml", "tqdm": "tqdm", "sklearn": "sklearn.datasets", "tensorboard": "torch.utils.tensorboard"}


def importable(module):
    try:
        importlib.import_module(module)
        return True
    except Exception:  # a broken install counts as missing
        return False


def write(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--force", default="", help="comma-separated: stand in even if importable (testing)")
    args = p.parse_args(argv)
    forced = {f for f in args.force.split(",") if f}
    os.makedirs(args.dir, exist_ok=True)
    for name, files in FILES.items():
        if name in forced or not importable(PROBE[name]):
            write(args.dir, files)
            sys.stdout.write(f"stand-in: {name} ({'forced' if name in forced else 'not importable'})"
                             f"{' -- SYNTHETIC digits, not Digits accuracies' if name == 'sklearn' else ''}\n")


if __name__ == "__main__":
    main()
