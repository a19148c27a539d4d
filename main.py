"""Search Robust Scratch Tickets and fine-tune them (see README and docs/tasks.md)."""
from utils.config import parse_config
from utils.errors import cli_main


def main(argv=None):
    cfg = parse_config(argv, prog="main.py")
    from trainers.loop import run_main
    return run_main(cfg, entry="main")


if __name__ == "__main__":
    cli_main(main)
