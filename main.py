"""The seed's entry point: ``python main.py --mode train|predict ...`` (see ``moe.seed_cli``)."""

import sys

from moe.seed_cli import run

if __name__ == "__main__":
    sys.exit(run())
