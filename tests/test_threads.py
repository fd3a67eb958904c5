"""The default number of threads (mflow.cli.threads): a fair share of the cores among the live mflow runs on the
machine, with real processes standing in for runs (nothing is trained)."""
import os
import subprocess
import sys
import time

import pytest
import torch

from mflow.cli import threads

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv(threads.ENV_DIR, str(d))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return d


def test_live_runs_share_the_cores_and_dead_ones_are_pruned(runs_dir):
    procs = [subprocess.Popen(SLEEPER) for _ in range(3)]
    try:
        for p in procs:
            threads.register(p.pid, runs_dir)
        assert threads.live_runs(runs_dir) == 3
        # this process counts too (it is about to run): 4 runs on 8 or on 3 cores
        assert threads.default_threads(runs_dir, n_cores=8) == 2 and threads.default_threads(runs_dir, n_cores=3) == 1
        procs[0].kill()
        procs[0].wait()
        assert threads.live_runs(runs_dir) == 2 and not (runs_dir / str(procs[0].pid)).exists()  # pruned
        assert threads.default_threads(runs_dir, n_cores=8) == 8 // 3
        (runs_dir / "999999999").write_text('{"pid": 999999999, "start": null}')  # a pid that cannot exist
        (runs_dir / "12345").write_text("not json")
        assert threads.live_runs(runs_dir) == 2 and sorted(os.listdir(runs_dir)) == sorted(str(p.pid) for p in procs[1:])
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert threads.live_runs(runs_dir) == 0 and threads.default_threads(runs_dir, n_cores=8) == 8


def test_a_reused_pid_is_not_the_run(runs_dir):
    """An entry whose recorded start time is not the process's is a dead run whose pid was given to another process."""
    if threads._start_time(os.getpid()) is None:
        pytest.skip("no /proc start times here")
    runs_dir.mkdir()
    (runs_dir / str(os.getpid())).write_text(f'{{"pid": {os.getpid()}, "start": "1"}}')
    assert threads.live_runs(runs_dir) == 0


def test_configure_threads_registers_and_an_explicit_number_wins(runs_dir):
    before = torch.get_num_threads()
    try:
        n = threads.configure_threads(None, runs_dir)
        assert (runs_dir / str(os.getpid())).exists() and n == threads.default_threads(runs_dir) == torch.get_num_threads()
        assert threads.live_runs(runs_dir) == 1  # registered once, counted once
        assert threads.configure_threads(3, runs_dir) == 3 == torch.get_num_threads()
        with pytest.raises(ValueError, match="--num_threads must be an integer >= 1"):
            threads.configure_threads(0, runs_dir)
    finally:
        torch.set_num_threads(before)


def test_omp_num_threads_caps_the_default(runs_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.default_threads(runs_dir, n_cores=16) == 1


def test_a_run_registers_itself_and_its_entry_goes_at_exit(runs_dir):
    """Two real processes through the entry points' call: each sees the other while both live; none is left after."""
    code = ("import sys, time; from mflow.cli.threads import configure_threads; n = configure_threads(); "
            "print(n, flush=True); time.sleep(float(sys.argv[1]))")
    env = {**os.environ, threads.ENV_DIR: str(runs_dir), "OMP_NUM_THREADS": ""}
    first = subprocess.Popen([sys.executable, "-c", code, "30"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert int(first.stdout.readline()) == threads.cores()  # alone on the machine's mflow runs
        second = subprocess.run([sys.executable, "-c", code, "0"], capture_output=True, text=True, env=env, timeout=120)
        assert int(second.stdout.split()[0]) == max(1, threads.cores() // 2)
        deadline = time.time() + 10
        while threads.live_runs(runs_dir) != 1 and time.time() < deadline:
            time.sleep(0.1)
        assert sorted(os.listdir(runs_dir)) == [str(first.pid)]  # the second removed its entry at exit
    finally:
        first.kill()
        first.wait()
    assert threads.live_runs(runs_dir) == 0  # killed: pruned by whoever looks
