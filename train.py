"""Train a metric flow: `python train.py [--config conf/X.yaml] [--section.key=value ...]`, `--resume runs/<run>`
(all options: --help; the logic is mflow.cli.train)."""
import sys

from mflow.cli.errors import run
from mflow.cli.train import main

if __name__ == "__main__":
    sys.exit(run(lambda argv: main(argv) and 0, "train.py"))
