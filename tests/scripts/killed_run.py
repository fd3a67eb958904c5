"""`python killed_run.py STEP ARGS...`: a train.py run (ARGS) that kills itself with SIGKILL once it has finished
optimizer step STEP (before that step's checkpoint is written: checkpoint callbacks run last)."""
import os
import signal
import sys

import lightning as L

from mflow.cli.train import main


class KillAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[2:], callbacks=[KillAt(int(sys.argv[1]))])
