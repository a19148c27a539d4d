"""Dense (natural or adversarial) training of any architecture; its checkpoint is a
valid --pretrained for a search (drawing Robust Trained Tickets)."""
from utils.config import parse_config
from utils.errors import cli_main


def main(argv=None):
    cfg = parse_config(argv, prog="train_full.py")
    from trainers.loop import run_main
    return run_main(cfg, entry="train_full")


if __name__ == "__main__":
    cli_main(main)
