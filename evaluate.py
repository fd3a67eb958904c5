"""Evaluate trained metric flows: `python evaluate.py --ckpt PATH [PATH ...] [--out DIR] [--n-test N] [--seed S]
[--noise-levels V ...] [--distances D ...] [--mode gaussian|manifold|both] [--ricci-points K] [--scaling]
[--target-gain G ...]` (all options: --help; the logic is mflow.evaluation)."""
import sys

from mflow.cli.errors import run
from mflow.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(run(main, "evaluate.py"))
