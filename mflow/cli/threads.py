"""The default number of torch CPU threads: a fair share of the machine among the mflow runs on it.

torch takes every core by default, so two runs on one machine (two sweep agents, a run beside an evaluation)
oversubscribe it: on 2 cores an epoch took 15x longer, not 2x. Every mflow entry point (train.py, evaluate.py,
finish.py, ``python -m mflow.data``, ``python -m mflow.bo``) therefore registers its process in a per-machine
directory, ``<tempdir>/mflow-runs/<pid>`` (removed at exit; entries of processes that died are pruned by whoever
looks), and without an explicit ``--num_threads`` takes

    max(1, cores // live runs)

threads (cores: those this process may run on; at most $OMP_NUM_THREADS when that is set). A training run
re-checks its share at every train epoch start (:func:`thread_share`, a callback train.py adds), so that it takes the
whole machine back when the others end and gives some up when others start; the other entry points are short and
take their share once. An explicit ``--num_threads`` always wins and is never changed. The studies and benchmarks
set their own thread counts (measurements need fixed ones).
"""
from __future__ import annotations

import atexit
import json
import os
import tempfile
from pathlib import Path

import torch

ENV_DIR = "MFLOW_RUNS_DIR"  # where the registrations go (default <tempdir>/mflow-runs): tests use their own


def runs_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path(tempfile.gettempdir()) / "mflow-runs")


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux /proc; None elsewhere): a pid reused by another process is not the run."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def register(pid: int | None = None, directory: Path | None = None) -> Path:
    """Record a run (default: this process) in the directory; this process's own entry is removed at exit."""
    pid = os.getpid() if pid is None else int(pid)
    d = Path(directory) if directory is not None else runs_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / str(pid)
    tmp = d / f".{pid}.tmp"
    tmp.write_text(json.dumps({"pid": pid, "start": _start_time(pid)}))
    os.replace(tmp, path)
    if pid == os.getpid():
        atexit.register(_unregister, path)
    return path


def _unregister(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def live_runs(directory: Path | None = None) -> int:
    """Registered runs whose process is alive (stale entries are removed)."""
    d = Path(directory) if directory is not None else runs_dir()
    n = 0
    for f in d.glob("[0-9]*") if d.is_dir() else ():
        try:
            entry = json.loads(f.read_text())
            pid = int(entry["pid"])
            alive = _alive(pid) and (entry.get("start") is None or _start_time(pid) in (None, entry["start"]))
        except (OSError, ValueError, KeyError, TypeError):
            alive = False
        if alive:
            n += 1
        else:
            _unregister(f)
    return n


def default_threads(directory: Path | None = None, n_cores: int | None = None) -> int:
    """max(1, cores // live runs) (this run counted once, registered or not), at most $OMP_NUM_THREADS if set."""
    d = Path(directory) if directory is not None else runs_dir()
    runs = live_runs(d)
    if not (d / str(os.getpid())).exists():
        runs += 1
    share = max(1, (n_cores or cores()) // max(1, runs))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


def configure_threads(requested: int | None = None, directory: Path | None = None) -> int:
    """Register this process and set torch's threads: ``requested`` if given (it wins), else the fair share;
    returns the number set. Every entry point calls this once, before any work."""
    if requested is not None and (isinstance(requested, bool) or int(requested) < 1):
        raise ValueError(f"--num_threads must be an integer >= 1, got {requested!r}")
    try:
        register(directory=directory)
    except OSError:  # an unwritable temp dir: no sharing, but the run goes on
        pass
    n = int(requested) if requested is not None else default_threads(directory)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


def thread_share(directory: Path | None = None):
    """A Lightning callback that re-takes the fair share of threads (:func:`default_threads`) at every train epoch
    start; for runs that did not ask for a number of threads themselves (lightning imported here, not by the
    entry points that need no trainer)."""
    import lightning as L

    class ThreadShare(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            n = default_threads(directory)
            if n != torch.get_num_threads():
                torch.set_num_threads(n)

    return ThreadShare()
