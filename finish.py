"""Finish a trained network with full-batch L-BFGS: `python finish.py --ckpt_path runs/<run>/checkpoints/last.ckpt
[--iterations 20]` (all options: --help; the logic is mflow.flows.finish and mflow.cli.finish)."""
from mflow.cli.console import finish

if __name__ == "__main__":
    finish()  # the same as the installed command mflow-finish
