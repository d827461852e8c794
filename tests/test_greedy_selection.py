"""Greedy SubTuning: the oracle block is picked first, both stopping rules, CV on train+val, no test leakage, JSON."""
from __future__ import annotations

import pytest

from autosub.errors import ConfigError, DataError
from autosub.selection.greedy_selection import GreedyResult, greedy, greedy_search

KW = dict(epochs=2, lr=1e-2, progress=False)


@pytest.mark.parametrize("stopping", ["strict", "official"])
def test_forward_greedy_picks_the_oracle_block_first(oracle, stopping):
    model, task = oracle
    res = greedy(model, task, stopping=stopping, **KW)
    first = res.path[0]
    assert first.chosen == model.oracle_block and first.start == ()
    assert sorted(first.candidates) == [0, 1, 2, 3]  # every candidate scored at the first step
    others = [s for b, s in first.candidates.items() if b != model.oracle_block]
    assert first.candidates[model.oracle_block] > 0.4 > max(others)
    assert model.oracle_block in res.selection and res.score >= first.score
    # later steps offer exactly the blocks not yet in the subset
    for step in res.path[1:]:
        assert set(step.candidates) == {0, 1, 2, 3} - set(step.start)
    assert res.n_fits == 1 + sum(len(s.candidates) for s in res.path)  # + the linear-probe start
    assert task.test.reads == []


def test_backward_greedy_never_removes_the_oracle_block(oracle):
    model, task = oracle
    res = greedy(model, task, direction="backward", epsilon=0.02, **KW)
    assert res.path[0].start == (0, 1, 2, 3)
    assert all(step.chosen != model.oracle_block for step in res.path if step.accepted)
    assert model.oracle_block in res.selection
    assert task.test.reads == []


def test_max_blocks_caps_forward_and_backward(oracle):
    model, task = oracle
    fwd = greedy(model, task, max_blocks=1, **KW)
    assert fwd.selection == (model.oracle_block,) and fwd.stop_reason == "max_blocks" and len(fwd.path) == 1
    bwd = greedy(model, task, direction="backward", max_blocks=1, epsilon=0.0, **KW)
    assert bwd.selection == (model.oracle_block,)  # removals forced down to the cap; the oracle block survives


def test_cross_validation_uses_train_and_val_only_and_the_shared_cache_is_exact(oracle, digits_features):
    model, task = oracle
    cached = greedy(model, task, cv_folds=2, max_blocks=1, **KW)
    plain = greedy(model, task, cv_folds=2, max_blocks=1, cache=False, **KW)
    assert cached.first_pick == model.oracle_block
    assert cached.n_fits == 2 * (1 + 4)  # 2 folds × (start + 4 candidates)
    assert cached.config["cached"] and not plain.config["cached"]
    for a, b in zip(cached.path[0].candidates.values(), plain.path[0].candidates.values()):
        assert a == pytest.approx(b, abs=1e-6)  # one cache over train+val, re-indexed per fold = no cache
    assert task.test.reads == []
    tiny = digits_features(n_train=12, n_val=8)  # some digit has < 5 examples in 20
    with pytest.raises(DataError, match="cv_folds=5"):
        greedy(model, tiny, cv_folds=5, **KW)


def fake_score(table: dict[tuple[int, ...], float]):
    calls: list[tuple[int, ...]] = []

    def score(sel):
        calls.append(sel)
        return table.get(sel, 0.0)

    return score, calls


# A plateau: adding block 1 gains only 0.002 (< ε), but {1, 2} then jumps to 0.70.
PLATEAU = {(): 0.50, (0,): 0.55, (1,): 0.50, (2,): 0.40, (0, 1): 0.552, (0, 2): 0.54, (0, 1, 2): 0.70}


def test_strict_stops_on_a_small_gain_official_walks_the_plateau():
    score, _ = fake_score(PLATEAU)
    sel, best, path, start, reason = greedy_search(score, [0, 1, 2], epsilon=0.01, stopping="strict")
    assert (sel, best) == ((0,), 0.55) and len(path) == 2 and not path[-1].accepted and "epsilon" in reason
    score, _ = fake_score(PLATEAU)
    sel, best, path, start, reason = greedy_search(score, [0, 1, 2], epsilon=0.01, stopping="official")
    assert (sel, best) == ((0, 1, 2), 0.70) and [p.chosen for p in path] == [0, 1, 2]
    assert [p.new_best for p in path] == [True, True, True]  # +0.002 is a new best for the official rule


def test_official_returns_the_best_ever_not_the_last():
    table = {(): 0.5, (0,): 0.60, (0, 1): 0.595, (0, 1, 2): 0.40}
    score, _ = fake_score(table)
    sel, best, path, _, reason = greedy_search(score, [0, 1, 2], epsilon=0.01, stopping="official")
    assert (sel, best) == ((0,), 0.60) and len(path) == 3  # kept going within ε, stopped on the drop
    assert "below the best" in reason
    score, _ = fake_score(table)
    sel, best, path, _, _ = greedy_search(score, [0, 1, 2], epsilon=0.01, stopping="strict")
    assert (sel, best) == ((0,), 0.60) and len(path) == 2


def test_backward_strict_removes_blocks_worth_less_than_epsilon():
    table = {(0, 1, 2): 0.80, (1, 2): 0.795, (0, 2): 0.60, (0, 1): 0.70, (2,): 0.50, (1,): 0.60}
    score, _ = fake_score(table)
    sel, best, path, start, _ = greedy_search(score, [0, 1, 2], direction="backward", epsilon=0.01)
    assert start == 0.80 and (sel, best) == ((1, 2), 0.795)  # block 0 was worth 0.005 < ε; block 2 worth 0.195
    assert [p.chosen for p in path] == [0, 2] and [p.accepted for p in path] == [True, False]


def test_ties_break_toward_the_lower_block_index():
    score, _ = fake_score({(): 0.1, (0,): 0.5, (1,): 0.5})
    sel, *_ = greedy_search(score, [1, 0], max_blocks=1)
    assert sel == (0,)


def test_greedy_result_json_round_trip(oracle, tmp_path):
    model, task = oracle
    res = greedy(model, task, max_blocks=2, **KW)
    path = res.save(tmp_path / "greedy.json")
    back = GreedyResult.load(path)
    assert back.to_dict() == res.to_dict()
    assert back.path[0].candidates == res.path[0].candidates and isinstance(back.selection, tuple)
    assert '"autosub_version"' in path.read_text()


@pytest.mark.parametrize("kw", [dict(direction="sideways"), dict(stopping="paper"), dict(epsilon=-0.1),
                                dict(max_blocks=0), dict(cv_folds=1), dict(epochs=0), dict(blocks=[7])])
def test_bad_arguments_fail_before_any_work(oracle, spy_split, kw):
    model, _ = oracle
    from autosub.data.task import Task

    with pytest.raises(ConfigError):
        greedy(model, Task(spy_split(), spy_split(), 10), progress=False, **kw)
