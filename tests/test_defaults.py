"""One source of defaults: every setting conf/default.yaml lists equals the code's default (the classes' and
train.py's), so that `python train.py`, a library user's NetworkFlow(surface) and a run without conf/ train the
same model. A key added to default.yaml without a code default to compare with fails here too."""
import importlib
import inspect

import pytest
import yaml

from mflow.cli.train import TRAINER_DEFAULTS
from mflow.configs import default_config
from mflow.data.datamodule import CYDataModule
from mflow.flows.network import NetworkFlow
from mflow.geometry.presets import manifold

CONF = yaml.safe_load(default_config().read_text())


def _class(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _signature_defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty}


def test_default_yaml_has_only_the_known_sections():
    assert set(CONF) <= {"model", "data", "trainer"}, set(CONF)
    assert "class_path" not in CONF.get("model", {}) and "class_path" not in CONF.get("data", {})  # the defaults


def test_model_defaults_are_default_yaml():
    code = dict(NetworkFlow(manifold("fermat_quintic")).hparams)  # loss_weights None -> {sigma: 1.0} as it runs
    for key, value in CONF["model"].items():
        assert key in code, f"model.{key} is in default.yaml but NetworkFlow has no such setting"
        assert code[key] == value, f"model.{key}: code default {code[key]!r}, conf/default.yaml {value!r}"


def test_data_defaults_are_default_yaml():
    code = _signature_defaults(CYDataModule)
    for key, value in CONF["data"].items():
        assert key in code, f"data.{key} is in default.yaml but CYDataModule has no such setting"
        assert code[key] == value, f"data.{key}: code default {code[key]!r}, conf/default.yaml {value!r}"


def test_trainer_defaults_and_callbacks_are_default_yaml():
    for key, value in CONF["trainer"].items():
        if key == "callbacks":
            continue
        assert TRAINER_DEFAULTS.get(key) == value, f"trainer.{key}: train.py {TRAINER_DEFAULTS.get(key)!r}, yaml {value!r}"
    for cb in CONF["trainer"].get("callbacks") or []:  # default.yaml adds callbacks; their settings are the code's
        code = _signature_defaults(_class(cb["class_path"]))
        for key, value in (cb.get("init_args") or {}).items():
            assert code.get(key) == value, f"{cb['class_path']}.{key}: code default {code.get(key)!r}, yaml {value!r}"


@pytest.mark.parametrize("key,value", [("activation", "relu"), ("out_scale", 0.3), ("lr", 2e-3), ("lr_decay", 0.95)])
def test_the_settings_that_disagreed_before(key, value):
    """The issue's table: these were gelu, 0.01, 1e-3, 1.0 in the code."""
    assert _signature_defaults(NetworkFlow)[key] == value
