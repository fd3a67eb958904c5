"""bench/leaderboard.py on a tiny budget: two presets write leaderboard.json and the markdown table with every column,
a killed training resumes, a second invocation redoes no step, a run of one preset replaces its row and keeps the
others'; the slow test checks the measured leaderboard's
figures against bands."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import leaderboard  # noqa: E402
from mflow.cli.train import main as train_main  # noqa: E402

PRESETS = ["fermat_quintic", "bicubic"]
TINY = ["data.n_points=500", "data.batch_size=100", "model.width=8", "model.depth=1", "model.compile=false",
        "trainer.callbacks=[]", "trainer.enable_model_summary=false"]
EPOCHS = 2


def argv(tmp: Path, **change) -> list[str]:
    opts = {"n_test": 200, "euler_points": 200, "ricci_points": 10, "iterations": 2, **change}
    return ["--presets", *PRESETS, "--out_dir", str(tmp / "lb"), "--set", f"trainer.max_epochs={EPOCHS}", *TINY,
            "--num_threads", "1", "--results_json", str(tmp / "leaderboard.json"), "--doc", str(tmp / "leaderboard.md"),
            *[f"--{k}={v}" for k, v in opts.items()]]


def outputs(tmp: Path) -> dict:
    """Every file a step writes, with its modification time."""
    files = [p for pre in PRESETS for p in (tmp / "lb" / pre).rglob("*") if p.is_file() and "csv" not in p.parts]
    return {p: p.stat().st_mtime_ns for p in files if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """The tiny leaderboard, its bicubic training killed after 1 of its 2 epochs first (what a kill leaves: a
    checkpoint, no summary, no step record)."""
    tmp = tmp_path_factory.mktemp("leaderboard")
    torch.set_num_threads(1)
    run = tmp / "lb" / "bicubic" / "train"
    train_main(["--config", str(leaderboard.preset_config("bicubic")), f"--run_dir={run}", "--wandb=off",
                "--trainer.enable_progress_bar=false", "--num_threads=1", *[f"--{kv}" for kv in TINY],
                "--trainer.max_epochs=1"])
    (run / "summary.json").unlink()
    rows = leaderboard.main(argv(tmp))
    return tmp, rows


def test_both_files_have_every_column_and_the_killed_training_resumed(board):
    tmp, rows = board
    data = json.loads((tmp / "leaderboard.json").read_text())
    assert [r["preset"] for r in data["rows"]] == PRESETS and data["rows"] == json.loads(json.dumps(rows))
    for r in rows:
        assert r["epochs"] == EPOCHS and r["test_points"] == 200
        assert r["gain"] == pytest.approx(r["sigma_fs"] / r["sigma_finish"])
        assert r["ricci"] > 0 and r["ricci_fs"] > 0
        e, m = r["euler"], r["euler"]["model"]
        assert e["n"] == 200 and m["error"] > 0
        assert m["relative_difference"] == pytest.approx((m["chi"] - e["topological"]) / abs(e["topological"]))
        assert set(r["seconds"]) == {*leaderboard.STEPS, "total"} and min(r["max_rss_mib"].values()) > 50
        assert r["threads"] == [1] and f"{r['seconds']['total']:.0f} (1 thr)" in leaderboard.table([r])
    quintic, bicubic = rows
    assert quintic["config"] == "conf/best.yaml" and bicubic["config"] == "conf/bicubic.yaml"
    assert quintic["euler"]["topological"] == -200 and bicubic["euler"]["topological"] == -162
    assert not quintic["resumed"] and bicubic["resumed"]  # the killed run went on from its checkpoint ...
    csv = sorted(p.name for p in (tmp / "lb" / "bicubic" / "train" / "csv").iterdir())
    assert csv == ["version_0", "version_1"]  # ... as a second start of the same run
    assert quintic["peer"] is None or quintic["peer"]["peer"] == "MLGeometry"
    md = (tmp / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| preset"))
    assert header == "| " + " | ".join(c for c, _ in leaderboard.COLUMNS) + " |"
    assert sum(line.startswith("| fermat_quintic") or line.startswith("| bicubic") for line in md.splitlines()) == 2
    assert "python bench/leaderboard.py --presets fermat_quintic bicubic" in md and "## Columns" in md


def test_a_second_invocation_redoes_no_step(board, capsys):
    tmp, rows = board
    before = outputs(tmp)
    assert leaderboard.main(argv(tmp)) == rows
    assert outputs(tmp) == before
    assert capsys.readouterr().out.count("done already") == len(PRESETS) * len(leaderboard.STEPS)


def test_a_run_of_one_preset_replaces_its_row_and_keeps_the_others(board):
    """--presets bicubic: bicubic's row is written anew (from its recorded steps), fermat_quintic's kept as it was, in
    both files; the table names both commands."""
    tmp, rows = board
    path = tmp / "leaderboard.json"
    data = json.loads(path.read_text())
    data["rows"][0]["marker"] = "kept"
    data["rows"][1]["sigma_fs"] = -1.0  # replaced by the run
    path.write_text(json.dumps(data))
    args = argv(tmp)
    args[args.index("--presets") + 1: args.index("--presets") + 1 + len(PRESETS)] = ["bicubic"]
    merged = leaderboard.main(args)
    got = json.loads(path.read_text())
    assert [r["preset"] for r in got["rows"]] == PRESETS and got["rows"] == json.loads(json.dumps(merged))
    assert got["rows"][0] == {**json.loads(json.dumps(rows[0])), "marker": "kept"}
    assert got["rows"][1] == {**json.loads(json.dumps(rows[1])), "command": "python bench/leaderboard.py " + " ".join(args)}
    md = (tmp / "leaderboard.md").read_text().splitlines()
    assert sum(line.startswith("| fermat_quintic") or line.startswith("| bicubic") for line in md) == 2
    assert {"python bench/leaderboard.py " + " ".join(a) for a in (argv(tmp), args)} <= set(md)


def test_other_settings_in_the_same_folder_are_refused(board):
    tmp, _ = board
    with pytest.raises(SystemExit, match="made with other settings"):
        leaderboard.main(argv(tmp, iterations=3))


def test_train_starts_resumes_or_starts_afresh(tmp_path):
    """train.py's arguments (mflow.cli.resume.study_run_arguments): a new run; a run killed before its first
    checkpoint (config.yaml, no last.ckpt) again with --overwrite; once it has last.ckpt, --resume with the options a
    resume takes."""
    run, cfg, new = tmp_path / "train", leaderboard.preset_config("bicubic"), ["--trainer.max_epochs=3", "--model.width=8"]
    fresh = ["--config", str(cfg), f"--run_dir={run}", "--wandb=off", "--trainer.enable_progress_bar=false",
             "--num_threads=1", *new]
    assert leaderboard.train_args(run, cfg, new, ["--num_threads=1"]) == fresh
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch=0.ckpt").write_text("")  # not last.ckpt: nothing to resume
    assert leaderboard.train_args(run, cfg, new, ["--num_threads=1"]) == [*fresh, "--overwrite"]
    (run / "checkpoints" / "last.ckpt").write_text("")
    assert leaderboard.train_args(run, cfg, new, ["--num_threads=1"]) == [
        "--resume", str(run), "--wandb=off", "--trainer.enable_progress_bar=false", "--num_threads=1",
        "--trainer.max_epochs=3"]


def test_bad_options_are_one_line(tmp_path, capsys):
    for bad in (["--set", "trainer.max_epochs"], ["--euler_points", "0"]):
        with pytest.raises(SystemExit):
            leaderboard.main([*bad, "--out_dir", str(tmp_path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert "error:" in err[-1] and ("KEY=VALUE" in err[-1] or "--euler_points >= 100" in err[-1])
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the measured leaderboard
@pytest.mark.slow
def test_measured_leaderboard_is_in_its_bands():
    """bench/results/leaderboard.json (python bench/leaderboard.py), each measured preset: the finish does not hurt,
    every metric beats g_FS, and chi agrees with the topological value within 5 Monte Carlo errors + 3%."""
    path = ROOT / "bench" / "results" / "leaderboard.json"
    if not path.exists():
        pytest.skip(f"{path} has not been measured yet: run python bench/leaderboard.py")
    rows = json.loads(path.read_text())["rows"]
    assert {r["preset"] for r in rows} <= set(leaderboard.PRESETS) and rows
    for r in rows:
        assert r["sigma_finish"] <= r["sigma_adam"] * 1.05, r["preset"]
        assert r["gain"] > 1 and r["gain_adam"] > 1, r["preset"]
        assert r["ricci"] < r["ricci_fs"], r["preset"]
        m, top = r["euler"]["model"], r["euler"]["topological"]
        assert abs(m["chi"] - top) <= 5 * m["error"] + 0.03 * abs(top), (r["preset"], m)
        assert r["seconds"]["total"] < 3600 and r["max_rss_mib"]["max"] < 16_000, r["preset"]
    missing = sorted(set(leaderboard.PRESETS) - {r["preset"] for r in rows})
    if missing:  # the measured rows are in their bands; say what the board still lacks
        pytest.skip(f"not measured yet: {missing} (python bench/leaderboard.py --presets {' '.join(missing)})")
