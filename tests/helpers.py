"""Small shared builders for tests (tiny models on CPU)."""
import os
import subprocess
import sys

import torch

from models import build_model
from utils.config import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(*extra):
    return parse_config(["--arch", "cResNet18", "--width-mult", "0.125", "--prune-rate", "0.3", *extra])


def tiny_model(*extra, num_classes=10, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_cfg(*extra), num_classes)


def run_cli(script, *args, timeout=300):
    """Run an entry point as a user would; returns CompletedProcess (text)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def train_natural(model, x, y, steps=30, lr=0.05, adam=False):
    """A few full-batch SGD (or Adam) steps on trainable params (makes a model worth attacking)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if adam else torch.optim.SGD(params, lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model
