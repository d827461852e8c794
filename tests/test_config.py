"""search()'s option groups: validated where they are written; dicts and the 0.1 keywords map onto them."""
from __future__ import annotations

import warnings

import pytest

from autosub.errors import ConfigError
from autosub.hpo.config import RunConfig, TrainingConfig, as_config
from autosub.hpo.searching import _legacy_options


@pytest.mark.parametrize("kwargs, field", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"), ({"amp": "yes"}, "amp"),
    ({"memory": 1024}, "memory"), ({"retrain": 1}, "retrain"), ({"cv_folds": 1}, "cv_folds"),
    ({"cv_folds": True}, "cv_folds"), ({"device": 0}, "device"),
])
def test_training_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}' parameter of TrainingConfig"):
        TrainingConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"run_dir": 3}, "run_dir"), ({"study_name": ""}, "study_name"), ({"callbacks": print}, "callbacks"),
    ({"callbacks": [1]}, "callbacks"), ({"progress": "no"}, "progress"),
])
def test_run_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}' parameter of RunConfig"):
        RunConfig(**kwargs)


def test_dicts_become_configs_and_unknown_keys_are_refused():
    assert as_config({"batch_size": 8}, TrainingConfig, "training") == TrainingConfig(batch_size=8)
    assert as_config(None, RunConfig, "run") == RunConfig()
    with pytest.raises(ConfigError, match=r"Unknown TrainingConfig field\(s\) \['bs'\]"):
        as_config({"bs": 8}, TrainingConfig, "training")
    with pytest.raises(ConfigError, match="'run' parameter of search must be"):
        as_config(["x"], RunConfig, "run")
    assert RunConfig(callbacks=[print]).to_dict()["callbacks"] == ["print"]


def test_the_0_1_keywords_still_work_with_a_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training, run, ray = _legacy_options({"batch_size": 16, "run_dir": "r", "address": "auto"}, TrainingConfig(),
                                             RunConfig(progress=False))
    assert training.batch_size == 16 and run.run_dir == "r" and run.progress is False and ray == {"address": "auto"}
    assert any(issubclass(w.category, DeprecationWarning) and "training=TrainingConfig" in str(w.message)
               for w in caught)
    with pytest.raises(ConfigError, match=r"unknown keyword argument\(s\) \['lr'\].*SearchSpace"):
        _legacy_options({"lr": 1e-3}, TrainingConfig(), RunConfig())
