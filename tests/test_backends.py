"""Backend options as one validated object: shorthands, validation before any work, the engine each one builds."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec

import optuna
import pytest

from autosub.errors import ConfigError, SearchAborted
from autosub.hpo.backends import Backend, OptunaBackend, RayBackend, resolve_backend
from autosub.hpo.engines.optuna import OptunaEngine

needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="needs ray: pip install 'autosub[ray]'")


def test_shorthands_resolve_to_backend_objects_and_objects_pass_through():
    assert isinstance(resolve_backend("optuna"), OptunaBackend)
    given = OptunaBackend()
    assert resolve_backend(given) is given and given.to_dict() == {"name": "optuna"}
    import autosub

    assert autosub.OptunaBackend is OptunaBackend and autosub.RayBackend is RayBackend


@pytest.mark.parametrize("value", ["dask", "", None, 3, OptunaEngine])
def test_an_unknown_backend_is_refused_naming_the_choices(value):
    with pytest.raises(ConfigError, match=r"The 'backend' parameter of search must be one of \['optuna', 'ray'\]"):
        resolve_backend(value)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_failures": -1}, "max_failures"),
    ({"max_failures": 1.5}, "max_failures"),
    ({"max_failures": True}, "max_failures"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
    ({"max_concurrent_trials": "4"}, "max_concurrent_trials"),
    ({"address": ""}, "address"),
    ({"address": 6379}, "address"),
    ({"resources_per_trial": {"gpu": -1}}, "resources_per_trial"),
    ({"resources_per_trial": {"cpu": 0}}, "resources_per_trial"),
    ({"resources_per_trial": {"cpu": 1, "gpu": 1.5}}, "resources_per_trial"),
    ({"resources_per_trial": [1]}, "resources_per_trial"),
])
def test_ray_options_are_validated_where_they_are_written_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"The '{field}' parameter of RayBackend must be"):
        RayBackend(**kwargs)


def test_valid_ray_options_are_kept_as_plain_data():
    b = RayBackend(address="auto", resources_per_trial={"cpu": 1, "gpu": 0.25}, max_failures=0,
                   max_concurrent_trials=3)
    assert b.resources_per_trial == {"cpu": 1.0, "gpu": 0.25}
    assert b.to_dict() == {"name": "ray", "address": "auto", "resources_per_trial": {"cpu": 1.0, "gpu": 0.25},
                           "max_failures": 0, "max_concurrent_trials": 3}
    assert isinstance(b, Backend) and RayBackend().max_failures == 2


def test_the_optuna_backend_builds_its_engine_and_opens_the_storage_before_any_work(tmp_path):
    kw = dict(study_name="s", run_dir=tmp_path, directions=["maximize"], seed=0)
    engine = OptunaBackend().engine(storage=None, resume=False, **kw)
    assert isinstance(engine, OptunaEngine) and (tmp_path / "study.journal").exists() and engine.load_state() == {}
    started = optuna.create_study(study_name="s", storage=engine.store.storage)
    started.enqueue_trial({"x": 1.0})  # a study holding a trial has started (an empty one may be taken over)
    with pytest.raises(ConfigError, match="already exists"):
        OptunaBackend().engine(storage=None, resume=False, **kw)
    with pytest.raises(ConfigError, match="optimizes"):
        OptunaBackend().engine(storage=None, resume=True, **{**kw, "directions": ["maximize", "minimize"]})
    with pytest.raises(SearchAborted, match="Cannot reach"):
        OptunaBackend().engine(storage="sqlite:////nonexistent-dir/x/study.db", resume=False, **kw)


@needs_ray
def test_max_concurrent_trials_reaches_tune_config():
    from ray import tune

    from autosub.hpo.engines.ray import tune_config

    cfg = tune_config(searcher=None, scheduler=None, trials=6, max_concurrent_trials=3)
    assert isinstance(cfg, tune.TuneConfig) and cfg.max_concurrent_trials == 3 and cfg.num_samples == 6
    assert tune_config(searcher=None, scheduler=None, trials=None, max_concurrent_trials=1).num_samples == -1


def test_backend_ray_without_ray_says_how_to_install_it_before_any_work():
    code = textwrap.dedent("""
        import sys
        sys.modules["ray"] = None  # as if ray were not installed
        from autosub.errors import MissingDependencyError
        from autosub.hpo.backends import RayBackend, resolve_backend
        from autosub.hpo.searching import search
        opts = RayBackend(address="auto", max_concurrent_trials=2)  # options are plain data: no ray needed
        calls = (lambda: resolve_backend("ray"), lambda: resolve_backend(opts),
                 lambda: search(None, None, 3, backend="ray", run_dir="/nonexistent"))
        for call in calls:
            try:
                call()
            except MissingDependencyError as exc:
                assert "pip install 'autosub[ray]'" in str(exc), exc
            else:
                raise SystemExit("no error")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ)
    assert p.returncode == 0, p.stderr + p.stdout
