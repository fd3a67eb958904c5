"""Finish a trained network with full-batch L-BFGS: `python finish.py --ckpt runs/<run>/checkpoints/last.ckpt
[--iterations 20]` (all options: --help; the logic is mflow.flows.finish and mflow.cli.finish)."""
import sys

from mflow.cli.errors import run
from mflow.cli.finish import main

if __name__ == "__main__":
    sys.exit(run(main, "finish.py"))
