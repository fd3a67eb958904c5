"""One run per directory: the lock, the refusal of a used directory (``--overwrite`` clears it), the run id, and
the removal of what a failed start created.

A train.py run holds ``fcntl.flock`` on ``<run dir>/.mflow.lock`` while it runs (the kernel releases it when the
process ends, however it ends). A second run into a locked directory is refused, and so is a new run into a
directory that already holds a run; ``--resume`` continues the run that is there.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path

LOCK_NAME = ".mflow.lock"
RUN_MARKERS = ("config.yaml", "summary.json", "checkpoints")  # what makes a directory a train.py run's
RUN_FILES = (*RUN_MARKERS, "csv", "wandb", "lightning_logs", "ntk_drift.json", "ntk_drift.png")  # what --overwrite removes


def new_run_id() -> str:
    """A fresh run id (also the run's W&B id): 'r' and 11 hex digits (never read as a number from YAML)."""
    return "r" + uuid.uuid4().hex[:11]


def entries(run: Path) -> list[Path]:
    """What a run directory holds, without its lock file."""
    return sorted(p for p in run.iterdir() if p.name != LOCK_NAME) if run.is_dir() else []


def snapshot(run: Path) -> set[Path]:
    """Every path under run (to tell later what a failed start added)."""
    return set(run.rglob("*")) if run.is_dir() else set()


class RunDir:
    """The run directory of one train.py run, as a context manager: locks it on entry (creating it), refuses a
    directory that holds a run for a new run (``overwrite``: removes that run's files, never others), releases
    the lock on exit, and on an error removes what this run added, unless it wrote a checkpoint (then the run can
    be resumed). ``active`` False: a process sharing another's directory (DDP ranks > 0) does none of this."""

    def __init__(self, path, new_run: bool, overwrite: bool = False, active: bool = True):
        self.path, self.new_run, self.overwrite, self.active = Path(path), new_run, overwrite, active
        self._fd: int | None = None
        self._created = not self.path.exists()
        self._before: set[Path] = set()
        self._t0 = 0

    def __enter__(self) -> "RunDir":
        if not self.active:  # another process of the run (DDP rank > 0): rank 0 holds the directory
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if self.new_run:
                self._held_run()  # refused now; with --overwrite its files go only once the checks pass (make_room)
            self._before, self._t0 = snapshot(self.path), time.time_ns()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.active and exc_type is not None and issubclass(exc_type, Exception):
                self.remove_added()
        finally:
            self._release()

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"{self.path} is in use by another train.py run (pid {holder}): wait for it to end, or "
                             "choose another --run_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def _held_run(self) -> list[Path]:
        """The files of a run already in the directory ([] if none); refused unless --overwrite."""
        held = [p for p in entries(self.path) if p.name in RUN_FILES]
        if not any(p.name in RUN_MARKERS for p in held):  # no run here (other files stay as they are)
            return []
        if not self.overwrite:
            raise ValueError(f"{self.path} holds a run already ({', '.join(p.name for p in held)}): --resume "
                             f"{self.path} continues it, --overwrite replaces it, or choose another --run_dir")
        return held

    def make_room(self) -> None:
        """--overwrite: remove the earlier run's files; called once the new run's checks have passed, so that a
        start that fails its checks leaves the earlier run as it was."""
        if not (self.active and self.new_run):
            return
        held = self._held_run()
        for p in held:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if held:
            print(f"[mflow] --overwrite: removed the earlier run's {', '.join(p.name for p in held)} from {self.path}")
        self._before = snapshot(self.path)

    def wrote_checkpoint(self) -> bool:
        """Whether this run wrote a checkpoint (then it can be resumed, and a failure keeps it)."""
        ckpts = self.path / "checkpoints"
        return ckpts.is_dir() and any(p not in self._before or p.stat().st_mtime_ns > self._t0 for p in ckpts.glob("*.ckpt"))

    def remove_added(self) -> None:
        """Remove what this run added (never what was there before it started), unless it wrote a checkpoint."""
        if self.wrote_checkpoint():
            return
        added = sorted(snapshot(self.path) - self._before, key=lambda p: len(p.parts), reverse=True)
        for p in added:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink(missing_ok=True)
        if self._created and not entries(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
