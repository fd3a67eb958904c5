"""The console commands of an installed mflow (pyproject.toml [project.scripts]): mflow-train, mflow-evaluate and
mflow-finish. The repository's train.py, evaluate.py and finish.py call the same functions, so a command and its
script behave alike: same options, same one-line errors (prefixed with the command as typed), same exit codes."""
from __future__ import annotations

import sys
from pathlib import Path

from .errors import run


def _prog(script: str) -> str:
    """The name errors are prefixed with: the command as the user typed it (train.py, mflow-train), else script."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("-c", "-m", "__main__.py") else script


def train() -> None:
    """mflow-train = python train.py (mflow.cli.train.main)."""
    from .train import main

    sys.exit(run(lambda argv: main(argv) and 0, _prog("train.py")))


def evaluate() -> None:
    """mflow-evaluate = python evaluate.py (mflow.evaluation.cli.main)."""
    from mflow.evaluation.cli import main

    sys.exit(run(main, _prog("evaluate.py")))


def finish() -> None:
    """mflow-finish = python finish.py (mflow.cli.finish.main)."""
    from .finish import main

    sys.exit(run(main, _prog("finish.py")))
