"""Where mflow's shipped configurations (conf/) are: in a checkout, the repository's top-level conf/; in an installed
wheel, the package data ``mflow/_conf`` (pyproject.toml maps conf/ there). Both hold the same files.

    conf_dir()          the folder (FileNotFoundError if neither exists: never a silent fallback)
    default_config()    conf_dir() / "default.yaml", the built-in default of train.py
    config(name)        conf_dir() / name, e.g. config("best.yaml") or config("paper/kernel_delta.yaml")
    preset_config(m)    the shipped config of manifold preset m (PRESET_CONFIGS): train.py's base config for
                        ``--data.manifold=m`` without ``--config``
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "_conf"  # the wheel's copy of conf/
CHECKOUT = PACKAGE.parent / "conf"  # the repository's conf/, beside mflow/ (editable installs, running from source)
DEFAULT = "default.yaml"
PRESET_CONFIGS = {  # preset (mflow.geometry.presets.PRESETS) -> its shipped config under conf/
    "fermat_quintic": DEFAULT, "fermat_quartic": DEFAULT, "fermat_cubic": DEFAULT,  # Fermat members: MultFS is enough
    "dwork": "dwork.yaml", "random": "random.yaml", "bicubic": "bicubic.yaml", "p1p3": "p1p3.yaml",
    "tetraquadric": "tetraquadric.yaml", "two_cubics": "two_cubics.yaml",  # generic members: PhiFS on invariant_dp
}


def _is_checkout() -> bool:
    return (PACKAGE.parent / "pyproject.toml").is_file()


def conf_dir() -> Path:
    """The folder of the shipped YAML configurations (module doc)."""
    if INSTALLED.is_dir():
        return INSTALLED
    if CHECKOUT.is_dir() and _is_checkout():
        return CHECKOUT
    raise FileNotFoundError(
        f"mflow's configurations are missing: neither {INSTALLED} (an installed wheel) nor {CHECKOUT} (a checkout) "
        "exists; reinstall mflow (pip install mflow, or pip install -e . in the repository)")


def config(name: str) -> Path:
    """A shipped configuration by its path under conf/; FileNotFoundError naming the folder if it is not there."""
    path = conf_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"no configuration {name!r} in {conf_dir()}")
    return path


def default_config() -> Path:
    """conf/default.yaml: train.py's built-in default (FileNotFoundError if it is missing)."""
    return config(DEFAULT)


def preset_config(manifold: str) -> Path | None:
    """The shipped config of a manifold preset (PRESET_CONFIGS; None for a name that is no preset)."""
    name = PRESET_CONFIGS.get(manifold)
    return None if name is None else config(name)
