"""One compute thread per test process (and per CLI subprocess a test starts).

Tests start CLI subprocesses and 2-rank torchrun jobs; with torch's default of
one thread per core, those oversubscribe a 2-core CI machine and OpenMP's thread
barriers make runs several times slower. One thread each keeps the suite steady.
"""
import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)
