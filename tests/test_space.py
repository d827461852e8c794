"""Budget, Meter and search spaces: validation, encoding, constraints and repair (no training)."""
from __future__ import annotations

import time

import numpy as np
import optuna
import pytest

from autosub.errors import ConfigError
from autosub.hpo.budget import Budget, Meter
from autosub.hpo.space import SearchSpace

PARAMS = [100, 200, 300, 400, 500, 600]
SHARE = [1.0, 0.9, 0.7, 0.5, 0.3, 0.2, 0.05]  # fork share per first tuned block (last: head only)


# ------------------------------------------------------------------------------------------------ budget
def test_int_budget_means_trials_and_dicts_name_fields():
    assert Budget.of(7) == Budget(trials=7)
    assert Budget.of({"compute": 2.5}).compute == 2.5
    assert Budget.of(Budget(seconds=3)).seconds == 3


@pytest.mark.parametrize("kwargs, field", [({"trials": 0}, "trials"), ({"trials": -3}, "trials"),
                                           ({"trials": 2.5}, "trials"), ({"seconds": 0}, "seconds"),
                                           ({"compute": -1.0}, "compute"), ({"compute": float("nan")}, "compute"),
                                           ({"trials": 3, "epoch_seconds": 0}, "epoch_seconds")])
def test_budget_rejects_non_positive_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        Budget(**kwargs)


@pytest.mark.parametrize("value", [0, -1, True, "10", 2.5, None])
def test_budget_of_rejects_bad_values(value):
    with pytest.raises(ConfigError):
        Budget.of(value)


def test_empty_budget_and_unknown_fields_fail():
    with pytest.raises(ConfigError, match="at least one"):
        Budget()
    with pytest.raises(ConfigError, match="Unknown Budget field"):
        Budget.of({"epochs": 3})


def test_meter_stops_at_each_budget_kind_and_pauses():
    m = Meter(epoch_seconds=0.01)
    assert m.exhausted(Budget(trials=2)) is None
    m.trials = 2
    assert "trials" in m.exhausted(Budget(trials=2))
    time.sleep(0.03)
    assert "compute" in m.exhausted(Budget(compute=1.0))  # 30 ms = 3 epochs of 10 ms
    with m.pause():
        time.sleep(0.05)
    assert m.seconds < 0.05 + 0.03  # the paused time is not counted
    rep = m.report()
    assert rep["trials"] == 2 and rep["compute"] > 1


# ------------------------------------------------------------------------------------------------ spaces
@pytest.mark.parametrize("kwargs, field", [({"kind": "pairs"}, "space"), ({"lr": (1e-2, 1e-4)}, "lr"),
                                           ({"lr": 0}, "lr"), ({"weight_decay": -1}, "weight_decay"),
                                           ({"max_blocks": 0}, "max_blocks"), ({"min_blocks": 3, "max_blocks": 2},
                                                                               "max_blocks"),
                                           ({"lr_multipliers": 2.0}, "lr_multipliers"),
                                           ({"max_added_cost": 0}, "max_added_cost")])
def test_search_space_validates_fields(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SearchSpace(**kwargs)


def test_no_feasible_selection_fails_at_bind():
    with pytest.raises(ConfigError, match="No selection satisfies"):
        SearchSpace(max_trainable_params=50).bind(PARAMS, head_params=10)


@pytest.mark.parametrize("kind, sel", [("subset", (1, 4)), ("consecutive", (2, 3, 4)), ("single", (5,))])
def test_encode_decode_round_trip(kind, sel):
    space = SearchSpace(kind=kind).bind(PARAMS, fork_share=SHARE)
    params = space.encode(sel, defaults=True)
    cand = space.decode(params)
    assert cand.selection == sel and cand.lr == pytest.approx(1e-3)
    assert set(space.structure_names) <= set(params)


def test_subset_suggests_a_fixed_parameter_set_and_multipliers_only_for_selected_blocks():
    space = SearchSpace(lr_multipliers=(0.1, 10.0), weight_decay=(1e-4, 1e-1)).bind(PARAMS)
    params = {**space.encode((0, 3)), "lr": 3e-3, "weight_decay": 1e-2, "lrm00": 2.0, "lrm03": 0.5}
    trial = optuna.trial.FixedTrial(params)
    cand = space.suggest(trial)
    assert cand.selection == (0, 3) and cand.lr_multipliers == {0: 2.0, 3: 0.5}
    assert set(trial.distributions) == {*space.block_names, "lr", "weight_decay", "lrm00", "lrm03"}
    assert trial.distributions["lr"].log


def test_constraints_are_reported_and_repaired():
    space = SearchSpace(max_blocks=3, max_trainable_params=1000, max_added_cost=0.6).bind(
        PARAMS, head_params=10, fork_share=SHARE)
    assert "blocks" in space.violation((0, 1, 2, 3))
    assert "trainable parameters" in space.violation((4, 5))
    assert "added inference cost" in space.violation((1,))
    scores = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    rng = np.random.default_rng(0)
    assert space.repair((1, 3), scores, rng) == (3,)  # the cost depends on the first block: it is dropped
    assert space.repair((), scores, rng) == (5,)  # grows with the best-rated block that fits
    assert space.repair((2, 4, 5), scores, rng) == (5,)  # cost: drop 2; 1110 params: drop the lower rated 4
    assert space.repair((2, 4, 5), -scores, rng) == (4,)  # ... or 5 when it is rated lower


@pytest.mark.parametrize("kind", ["subset", "consecutive", "single"])
def test_repair_and_sample_always_give_feasible_selections(kind):
    space = SearchSpace(kind=kind, max_blocks=3, max_trainable_params=1200, max_added_cost=0.75).bind(
        PARAMS, head_params=10, fork_share=SHARE)
    rng = np.random.default_rng(1)
    scores = rng.normal(size=6)
    for _ in range(200):
        raw = tuple(np.flatnonzero(rng.random(6) < 0.5))
        assert space.feasible(space.repair(raw, scores, rng))
        assert space.feasible(space.sample(rng, np.exp(scores)))
    if kind == "consecutive":
        for w in space.windows():
            assert w == tuple(range(w[0], w[-1] + 1))


def test_sampling_follows_the_weights():
    space = SearchSpace(max_blocks=1).bind(PARAMS)
    rng = np.random.default_rng(0)
    w = np.array([1, 1, 1, 1, 1, 50.0])
    picks = [space.sample(rng, w)[0] for _ in range(300)]
    assert picks.count(5) > 200
