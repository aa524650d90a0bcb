"""The seed's entry point: ``python main.py --mode train|predict ...`` (see ``moe.seed.cli``)."""

import sys

from moe.seed.cli import run

if __name__ == "__main__":
    sys.exit(run())
