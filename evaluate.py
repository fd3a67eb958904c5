"""Evaluate trained metric flows: `python evaluate.py --ckpt_path PATH [PATH ...] [--out_dir DIR] [--n_test N]
[--seed S] [--noise_levels V ...] [--distances D ...] [--mode gaussian|manifold|both] [--ricci_points K] [--euler N]
[--scaling] [--target_gain G ...]` (all options: --help; the logic is mflow.evaluation)."""
from mflow.cli.console import evaluate

if __name__ == "__main__":
    evaluate()  # the same as the installed command mflow-evaluate
