"""Train a metric flow: `python train.py [--config conf/X.yaml] [--section.key=value ...]`, `--resume runs/<run>`
(all options: --help; the logic is mflow.cli.train)."""
from mflow.cli.console import train

if __name__ == "__main__":
    train()  # the same as the installed command mflow-train
