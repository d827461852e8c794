"""Shared checks of the fault-injection tests (``test_resume`` for Optuna, ``test_ray`` for Ray): what must hold
after a driver SIGKILLed at some point was resumed — read with Optuna's public API only."""
from __future__ import annotations

from pathlib import Path

import optuna

from autosub.hpo.engines._study import FAIL_KEY, STUDY_JOURNAL, open_storage


def run_storage(run_dir: Path) -> optuna.storages.BaseStorage | None:
    """The default storage of ``run_dir`` (its journal file), or None before a search created it."""
    if not (Path(run_dir) / STUDY_JOURNAL).exists():
        return None
    return open_storage(None, Path(run_dir))[0]


def study_of(run_dir: Path, name: str) -> optuna.Study | None:
    """The study ``name`` in ``run_dir``'s default storage, or None before it exists."""
    storage = run_storage(run_dir)
    if storage is None or name not in optuna.study.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def trials_of(run_dir: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = study_of(run_dir, name)
    return [] if study is None else study.get_trials(deepcopy=False)


def counted(trials) -> list:
    """The trials the budget counts: finished and run by the search (not the profile's known results, not a lost
    trial whose retry runs it again, not one settled unrun)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials if t.state.is_finished() and not t.user_attrs.get("known")
            and not t.user_attrs.get("unrun") and not (t.state.name == "FAIL" and t.number in retried)]


def fail_reason(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """A trial's fail reason: its own attribute, or the study-level one of a trial failed after its driver died."""
    return trial.user_attrs.get("fail_reason") or study.user_attrs.get(f"{FAIL_KEY}{trial.number}", "")


def check_resumed(before: list, study: optuna.Study, budget: int) -> None:
    """After the resume: the study consistent, no finished trial lost, changed or trained twice, every trial the
    dead driver left RUNNING failed with a reason and run again once, and the original budget finished."""
    after = study.get_trials(deepcopy=False)
    table = [(t.number, t.state.name, fail_reason(study, t), t.user_attrs.get("retry_of")) for t in after]
    assert not [t for t in after if t.state.name in ("WAITING", "RUNNING")], table  # consistent
    for t in before:
        if t.state.name in ("COMPLETE", "PRUNED"):  # kept as it was
            assert after[t.number].state == t.state and after[t.number].params == t.params, table
            assert after[t.number].values == t.values, table
    trained = [tuple(sorted(t.params.items())) for t in after if t.state.name == "COMPLETE"
               and not t.user_attrs.get("known") and "duplicate_of" not in t.user_attrs]
    assert len(trained) == len(set(trained)), table  # nothing trained twice to completion
    assert len(counted(after)) == budget, table  # the original budget, finished
    for t in before:
        if t.state.name != "RUNNING":
            continue
        lost = after[t.number]
        assert lost.state.name == "FAIL" and fail_reason(study, lost).startswith("lost"), table
        again = [r for r in after if r.user_attrs.get("retry_of") == t.number]
        # the same parameters (a trial lost before all were sampled: those it had, the sampler picks the rest)
        assert len(again) == 1 and lost.params.items() <= again[0].params.items(), table
        assert again[0].state.is_finished(), table
