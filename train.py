"""Train a metric flow: `python train.py [--config conf/X.yaml] [--section.key=value ...]`."""
from mflow.cli import main

if __name__ == "__main__":
    main()
