"""`python killed_run.py STEP[:SIGNAL] ARGS...`: a train.py run (ARGS) that sends itself SIGNAL (default KILL; INT is
a Ctrl-C) once it has finished optimizer step STEP (before that step's checkpoint is written: checkpoint callbacks
run last)."""
import os
import signal
import sys

import lightning as L

from mflow.cli.errors import run
from mflow.cli.train import main


class KillAt(L.Callback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


if __name__ == "__main__":
    step, _, name = sys.argv[1].partition(":")
    kill = KillAt(int(step), getattr(signal, f"SIG{name or 'KILL'}"))
    sys.exit(run(lambda argv: main(argv, callbacks=[kill]) and 0, "train.py", sys.argv[2:]))
