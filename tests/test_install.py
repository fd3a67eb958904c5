"""A real install: the wheel (not editable) in a fresh venv runs the built-in default (conf/default.yaml) through the
console command, from a folder outside the checkout.

The venv gets the current environment's site-packages through a .pth file (torch, Lightning, ... come from here,
nothing is downloaded), listed after its own, so the wheel installed into it (--no-deps --force-reinstall) shadows
the editable checkout; a venv's --system-site-packages would not do that when this test itself runs in a venv (it
would give the base interpreter's packages, not the venv's)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "mflow", "conf")  # what the wheel is built from


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(MFLOW_CACHE_DIR=str(tmp / "cache"), WANDB_MODE="offline", WANDB_DIR=str(tmp), OMP_NUM_THREADS="1",
               HOME=str(tmp / "home"))
    return env


def _run(cmd, cwd, env, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """mflow's wheel, built (no isolation, no dependencies) from a copy of the sources: the build leaves nothing in
    the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_conf"))
        else:
            shutil.copy2(p, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], tmp, _env(tmp))
    (whl,) = (tmp / "dist").glob("mflow-*.whl")
    return whl


def test_wheel_holds_every_package_and_config(wheel):
    """Every package under mflow/ and every YAML under conf/ (as mflow/_conf/...) is in the wheel, with the three
    console commands (pyproject.toml lists the packages by hand: a new subpackage must be added there)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "mflow").rglob("__init__.py") if "__pycache__" not in p.parts}
    assert packages and packages <= names, f"not in the wheel (add them to pyproject.toml): {sorted(packages - names)}"
    configs = {"mflow/_conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert "mflow/_conf/default.yaml" in configs and configs <= names, sorted(configs - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for cmd, target in (("mflow-train", "train"), ("mflow-evaluate", "evaluate"), ("mflow-finish", "finish")):
        assert f"{cmd} = mflow.cli.console:{target}" in text


def test_installed_wheel_trains_the_default(wheel, tmp_path):
    venv = tmp_path / "venv"
    env = _env(tmp_path)
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path, env).stdout.strip())
    here = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "_mflow_test_parent.pth").write_text("\n".join(here) + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", "-q", wheel], tmp_path, env)

    elsewhere = tmp_path / "elsewhere"  # not the checkout: no conf/ or mflow/ to find by accident
    elsewhere.mkdir()
    where = _run([py, "-c", "import mflow, mflow.configs as c; print(mflow.__file__); print(c.default_config())"],
                 elsewhere, env).stdout.split()
    assert all(Path(w).resolve().is_relative_to(venv.resolve()) for w in where), f"not the installed wheel: {where}"

    run = tmp_path / "run"
    _run([venv / "bin" / "mflow-train", "--data.n_points=3000", "--trainer.max_epochs=1", f"--run_dir={run}"],
         elsewhere, env, timeout=300)
    ran = yaml.safe_load((run / "config.yaml").read_text())
    default = yaml.safe_load((ROOT / "conf" / "default.yaml").read_text())
    model = ran["model"].get("init_args", ran["model"])
    for key in ("head", "depth", "width", "activation", "out_scale", "lr", "lr_decay"):
        assert model[key] == default["model"][key], (key, model[key], default["model"][key])
    data = ran["data"].get("init_args", ran["data"])
    assert data["batch_size"] == default["data"]["batch_size"] and data["n_points"] == 3000
    assert [c["class_path"].rsplit(".", 1)[-1] for c in ran["trainer"]["callbacks"]] == ["NTKDrift"]
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()


def test_configs_are_found_or_refused(tmp_path, monkeypatch):
    """In the checkout conf_dir() is the repository's conf/; with no conf/ anywhere it is an error naming both
    places (never a silent fallback to the code defaults), and so is a configuration that is not there."""
    from mflow import configs

    assert configs.conf_dir() == ROOT / "conf" and configs.default_config() == ROOT / "conf" / "default.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        configs.config("nope.yaml")
    monkeypatch.setattr(configs, "INSTALLED", tmp_path / "mflow" / "_conf")
    monkeypatch.setattr(configs, "CHECKOUT", tmp_path / "conf")
    with pytest.raises(FileNotFoundError, match="configurations are missing"):
        configs.default_config()
