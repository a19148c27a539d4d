"""Test helper, launched by torchrun from tests/test_ddp.py: runs ``main.py``'s code
path unchanged and, after training, writes this rank's parameter and buffer
checksums to ``$RST_DUMP_SCORES_DIR/rank<R>.json``.

The library never writes a file on a rank other than 0; this script (not the
library) reads the variable, so the test can compare the final state of every
rank without a debug hook in library code.
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import main as main_entry  # noqa: E402
from trainers import loop  # noqa: E402
from utils.errors import cli_main  # noqa: E402


def checksums(model):
    """sha256 of every parameter and buffer (bytes, so equal means bit-identical)."""
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        out[name] = hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return out


def dumping_fit(original):
    def fit(cfg, ctx, run, device, data, model, *args, **kwargs):
        out = original(cfg, ctx, run, device, data, model, *args, **kwargs)
        folder = os.environ["RST_DUMP_SCORES_DIR"]
        with open(os.path.join(folder, f"rank{ctx.rank}.json"), "w") as fh:
            json.dump({"rank": ctx.rank, "world_size": ctx.world_size, "state": checksums(model)}, fh)
        return out
    return fit


if __name__ == "__main__":
    loop.fit = dumping_fit(loop.fit)
    cli_main(main_entry.main, sys.argv[1:])
