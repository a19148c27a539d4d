"""The paper's three figures as experiments: ``python experiments/figures.py --help``."""
