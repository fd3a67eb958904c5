"""The checkpoints of a train.py run: ``last.ckpt`` (every N steps and the final state when training ends) and the
best by val sigma, without Lightning's ``-vN`` copies, following the run when its folder is moved or copied."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint


def moved_state(state: dict, new_dir: str) -> dict:
    """A ModelCheckpoint state saved in another folder, with its paths moved to new_dir."""
    old = state.get("dirpath")
    if not old or old == new_dir:
        return state

    def move(p):
        return str(Path(new_dir) / Path(p).name) if p and Path(p).parent == Path(old) else p

    out = {**state, "dirpath": new_dir}
    for k in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if k in out:
            out[k] = move(out[k])
    if isinstance(out.get("best_k_models"), dict):
        out["best_k_models"] = {move(k): v for k, v in out["best_k_models"].items()}
    return out


class RunCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that overwrites its file names (no ``-vN``) and keeps its record of the run's checkpoints
    when the run directory was moved or copied (Lightning would forget it and write ``last-v1.ckpt``)."""

    def __init__(self, **kwargs):
        super().__init__(enable_version_counter=False, **kwargs)

    @property
    def state_key(self) -> str:  # the same key as a plain ModelCheckpoint: checkpoints of earlier runs still resume
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(moved_state(state_dict, self.dirpath) if self.dirpath else state_dict)


class LastCheckpoint(RunCheckpoint):
    """``last.ckpt``: every ``every_n_train_steps`` steps and, when training ends (finished, stopped by max_time or
    early stopping, or interrupted by Ctrl-C at the next step, :meth:`interruptible`), the final state. Every
    checkpoint of the run records ``run = {id, end}``: the run id and, in a final state, how it ended
    (finished | stopped | interrupted)."""

    def __init__(self, dirpath, every_n_train_steps: int, run_id: str | None):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps)
        self.run_id, self.end, self.stop_requested = run_id, None, False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["run"] = {"id": self.run_id, "end": self.end}

    def _save_final(self, trainer, end: str) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == 0:
            return
        self.end = end
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        requested = self.stop_requested
        if trainer.world_size > 1:  # every rank stops at the same step
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested and not trainer.should_stop:  # the state between two steps: resumes exactly
            self.stop_requested = True
            self._save_final(trainer, "interrupted")
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        if self.end == "interrupted":
            return
        steps, epochs = trainer.max_steps, trainer.max_epochs
        done = (steps not in (None, -1) and trainer.global_step >= steps) or (
            epochs not in (None, -1) and trainer.current_epoch >= epochs)
        self._save_final(trainer, "finished" if done else "stopped")

    @contextmanager
    def interruptible(self):
        """While in it, the first Ctrl-C stops training after the current step (the state goes to last.ckpt);
        a second one aborts at once."""
        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            print(f"[mflow] Ctrl-C: stopping after this step; {Path(self.dirpath) / 'last.ckpt'} will hold the state "
                  "(Ctrl-C again aborts)", file=sys.stderr, flush=True)

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Ctrl-C keeps its usual meaning
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
