"""Selectors: registry, prior, the prior-biased sampler, and each strategy's plan (synthetic objective, no training)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autosub.hpo.engines import Job, TrialOutcome
from autosub.hpo.engines.optuna import OptunaEngine
from autosub.errors import ConfigError
from autosub.selection.profiling import Profile, ProfileEntry
from autosub.hpo.result import TrialRecord
from autosub.hpo.selectors import (SELECTORS, BaseSelector, GreedySelector, Prior, SelectorContext, StructuredSampler,
                               TopKSelector, TPESelector, get_selector, register_selector)
from autosub.hpo.budget import Budget, Meter
from autosub.hpo.space import SearchSpace

N = 6
GOOD = {4: 0.3, 5: 0.2, 1: 0.05}  # synthetic value of each block: the optimum is (4, 5) ∪ maybe 1


def synthetic(sel: tuple[int, ...]) -> float:
    return 0.4 + sum(GOOD.get(i, -0.02) for i in sel) - 0.1 * max(0, len(sel) - 2)


def run(selector, *, prior=None, budget=12, space=None, tmp: Path | None = None, epochs=1):
    """Run the Optuna engine on a synthetic objective; return the records."""
    bound = (space or SearchSpace(max_blocks=3)).bind([100] * N, head_params=10)
    ctx = SelectorContext(space=bound, prior=prior, seed=0, epochs=epochs, n_trials=budget)

    def run_trial(cand, report):
        score = synthetic(cand.selection)
        for e in range(epochs):
            if report:
                report(e, score * (e + 1) / epochs)
        return TrialOutcome([score], {"curve": [score]})

    engine = OptunaEngine(storage=optuna.storages.InMemoryStorage(), study_name="s", run_dir=tmp or Path("."),
                          resume=False, directions=["maximize"])
    job = Job(space=bound, selector=get_selector(selector), context=ctx, run_trial=run_trial,
              budget=Budget(trials=budget), meter=Meter(1.0), objectives=("score",), progress=False)
    return engine.run(job)


# ------------------------------------------------------------------------------------------------ registry
def test_registry_knows_the_strategies_and_rejects_unknown_names():
    assert {"tpe", "random", "greedy", "profile-top-k"} <= set(SELECTORS)
    with pytest.raises(ConfigError, match="'selector'.*greedy"):
        get_selector("bayes")


def test_a_new_selector_plugs_in_by_name():
    @register_selector("always-last")
    class Last(BaseSelector):
        def initial(self, ctx):
            from autosub.hpo.selectors import Proposal

            return [Proposal(ctx.space.encode((ctx.space.n - 1,), defaults=True))]

        def propose(self, ctx, history):
            return None

    try:
        out = run("always-last", budget=5)
        assert [r.selection for r in out.records] == [(N - 1,)] and out.stop_reason == "selector finished"
    finally:
        SELECTORS.pop("always-last")


# ------------------------------------------------------------------------------------------------ prior
def _profile() -> Profile:
    entries = [ProfileEntry((b,), f"b{b}", [0.5 + GOOD.get(b, 0.0)], 1 if b not in (4, 5) else 2, 0.1, 100, 0.5,
                            history={1: [0.5 + GOOD.get(b, 0.0)], **({2: [0.6 + GOOD[b]]} if b in (4, 5) else {})})
               for b in range(N)]
    return Profile(entries=entries, block_names=[f"b{i}" for i in range(N)],
                   config={"lr": 1e-3, "batch_size": 32, "seed": 0, "epochs": 2})


def test_prior_from_profile_mapping_and_sequence():
    p = Prior.of(_profile(), N)
    assert p.ranking[:2] == [4, 5] and p.source == "profile"
    assert Prior.of({2: 0.9, 0: 0.1}, N).ranking == [2, 0]
    z = Prior.of([0, 1, 2, 3, 4, 5], N).z(N)
    assert np.all(np.diff(z) > 0)
    assert Prior.from_dict(p.to_dict()).ranking == p.ranking
    with pytest.raises(ConfigError, match="blocks"):
        Prior.of({9: 1.0}, N)
    with pytest.raises(ConfigError, match="prior"):
        Prior.of("fast", N)


def test_structured_sampler_is_feasible_and_biased_toward_the_prior():
    bound = SearchSpace(max_blocks=2, max_trainable_params=300).bind([100] * N, head_params=50)
    prior = Prior.of({5: 1.0, 4: 0.9, 3: 0.1, 2: 0.0, 1: -0.1, 0: -0.2}, N)
    ctx = SelectorContext(space=bound, prior=prior, seed=0)
    study = optuna.create_study(direction="maximize", sampler=get_selector("tpe").sampler(ctx))
    study.optimize(lambda t: synthetic(bound.suggest(t).selection), n_trials=30)
    sels = [bound.decode(t.params).selection for t in study.trials]
    assert all(bound.feasible(s) for s in sels)  # 2 blocks x 100 + 50 head ≤ 300
    assert sum(5 in s for s in sels) > sum(0 in s for s in sels) + 5
    assert isinstance(study.sampler, StructuredSampler)


def test_multi_objective_tpe_still_models_the_selection():
    bound = SearchSpace(max_blocks=2).bind([100] * N, head_params=10)
    ctx = SelectorContext(space=bound, seed=0, directions=("maximize", "minimize"))
    sampler = TPESelector(n_startup_trials=4).sampler(ctx)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    sources = []

    def objective(t):
        sel = bound.suggest(t).selection
        sources.append(sampler.proposed_by(t.number))
        return synthetic(sel), float(len(sel))

    study.optimize(objective, n_trials=10)
    assert sources[:4] == ["random"] * 4 and set(sources[4:]) == {"TPESampler"}
    assert all(bound.feasible(bound.decode(t.params).selection) for t in study.trials)


def test_tpe_initial_warm_starts_from_the_profile_and_enqueues_pairs():
    bound = SearchSpace(max_blocks=3).bind([100] * N)
    ctx = SelectorContext(space=bound, prior=Prior.of(_profile(), N), seed=0, epochs=2,
                          fit_defaults={"batch_size": 32})
    props = TPESelector().initial(ctx)
    warm = [p for p in props if p.state]
    assert {p.state for p in warm} == {"COMPLETE", "PRUNED"} and len(warm) == N
    assert all(p.values for p in warm if p.state == "COMPLETE")
    queued = [bound.decode(p.params).selection for p in props if not p.state]
    assert (4, 5) in queued and (1, 4, 5) in queued and len(set(queued)) == len(queued)
    # another lr than the profile's: no warm start, the best singles are enqueued instead
    other = SelectorContext(space=SearchSpace(lr=3e-3).bind([100] * N), prior=ctx.prior, seed=0, epochs=2)
    props = TPESelector().initial(other)
    assert not any(p.state for p in props) and (4,) in [other.space.decode(p.params).selection for p in props]


def test_tpe_with_prior_finds_the_optimum_sooner_than_random():
    prior = Prior.of({b: GOOD.get(b, -0.02) for b in range(N)}, N)
    best = lambda out: max(r.values[0] for r in out.records if r.values)  # noqa: E731
    with_prior = run("tpe", prior=prior, budget=6)
    assert best(with_prior) == pytest.approx(synthetic((4, 5)))
    assert [r.user_attrs["proposed_by"] for r in with_prior.records][:2] == ["prior:single"] * 2


# ------------------------------------------------------------------------------------------------ plans
def test_greedy_adds_the_best_block_until_the_gain_is_below_epsilon():
    out = run("greedy", budget=50)
    steps = {}
    for r in out.records:
        steps.setdefault(r.user_attrs["greedy_step"], []).append(r)
    assert len(steps[0]) == N and all(len(r.selection) == 1 for r in steps[0])
    assert all(set(r.selection) >= {4} for r in steps[1])  # step 1 extends the best single
    assert max(r.values[0] for r in out.records) == pytest.approx(synthetic((4, 5)))
    assert out.stop_reason == "selector finished" and len(steps) == 3  # (4,5,x) all lose: stop


def test_greedy_waits_for_pending_trials_and_needs_a_subset_space():
    ctx = SelectorContext(space=SearchSpace().bind([100] * N))
    pending = [TrialRecord(0, "WAITING", None, {}, (0,), user_attrs={"greedy_step": 0})]
    assert GreedySelector().propose(ctx, pending) == []
    assert "single" not in GreedySelector.kinds


def test_profile_top_k_trains_the_top_blocks_then_stops():
    out = run("profile-top-k", prior=Prior.of({b: GOOD.get(b, -0.02) for b in range(N)}, N), budget=20)
    assert [r.selection for r in out.records] == [(4,), (4, 5), (1, 4, 5)]
    assert out.stop_reason == "selector finished" and TopKSelector.needs_prior


# ------------------------------------------------------------------------------------------- the contract
def test_capabilities_are_declared_class_attributes():
    for name in ("name", "kinds", "uses_prior", "needs_prior", "prunable", "samples"):
        assert name in BaseSelector.__dict__, name  # declared (and documented) on the base
    assert TPESelector.samples and not GreedySelector.samples and not TopKSelector.samples

    class Adaptive(BaseSelector):  # overrides propose without saying: an adaptive plan waits, never samples
        def propose(self, ctx, history):
            return []

    class Sampling(Adaptive):
        samples = True

    assert not Adaptive.samples and Sampling.samples
    for hook in ("sampler", "initial", "propose", "describe"):
        doc = getattr(BaseSelector, hook).__doc__
        assert "Returns:" in doc and (hook == "describe" or "Args:" in doc), hook


def test_greedy_selector_follows_the_same_rule_as_greedy_search():
    from autosub.selection.greedy_selection import greedy_search

    out = run("greedy", budget=50)
    sel, score, path, _, _ = greedy_search(synthetic, range(N), epsilon=0.005, max_blocks=3)
    best = max((r for r in out.records if r.values), key=lambda r: (r.values[0], -r.number))
    assert best.selection == sel and best.values[0] == pytest.approx(score)
    accepted = [s for s in path if s.accepted]  # the same steps taken, one greedy step per accepted move
    assert max(r.user_attrs["greedy_step"] for r in out.records) == len(accepted)


# ------------------------------------------------------------------------------------ zero-cost rankings
class Planted(torch.nn.Module):
    """An MLP on 8×8 digits with N blocks (orthogonal ×√2, as conftest's Oracle) where one block is made to stand
    out for one statistic: ``"small"`` weights ×1e-2 (the highest ‖∇W‖/‖W‖), ``"identity"`` (output = input: the
    lowest 1 − CKA), ``"constant"`` (output carries nothing about the labels: the lowest LogME)."""

    def __init__(self, plant: str, block: int, width: int = 32) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.stem = torch.nn.Linear(64, width)
        self.blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU())
                                            for _ in range(N)])
        self.head = torch.nn.Linear(width, 10)
        with torch.no_grad():
            for m in [self.stem, *(b[0] for b in self.blocks)]:
                torch.nn.init.orthogonal_(m.weight, gain=2**0.5, generator=gen)
                m.bias.zero_()
            w, b = self.blocks[block][0].weight, self.blocks[block][0].bias
            if plant == "small":
                w.mul_(1e-2)
            elif plant == "identity":
                w.copy_(torch.eye(width))
            else:
                w.zero_()
                b.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))


def _cka_predictor():
    """A LayerPredictor taught on synthetic tasks that a block with a low 1 − CKA is the one to tune."""
    from autosub.selection.predictor import LayerPredictor
    from autosub.selection.stats import STATS, BlockStats

    rng = np.random.default_rng(0)
    tasks, targets = [], []
    for _ in range(12):
        values = {k: list(rng.normal(size=N)) for k in STATS}
        tasks.append(BlockStats([f"b{i}" for i in range(N)], values, task={"n_train": 100, "num_classes": 10}))
        targets.append(-np.asarray(values["cka"]))
    return LayerPredictor(estimator="ridge", features=("cka",), task_features=()).fit(tasks, targets)


@pytest.mark.parametrize("name, plant, block, direction", [
    ("rgn", "small", 3, 1),          # Auto-RGN's published rule: the largest relative gradient norm
    ("cka", "identity", 2, -1),      # the block that changes its input least
    ("logme", "constant", N - 1, -1),  # the block whose output explains the labels least
    ("predictor", "identity", 1, None),
])
def test_each_zero_cost_selector_trains_the_top_block_of_its_ranking(digits_features, name, plant, block,
                                                                     direction):
    from autosub.selection.predictor import zero_cost_prior

    task = digits_features(n_train=200, n_val=50)  # its test split refuses every read
    sel = get_selector(name) if direction is None else get_selector(name, direction=direction)
    assert sel.fixed_prior and sel.default_prior == name and sel.uses_prior
    prior = zero_cost_prior(Planted(plant, block), task, sel.default_prior, direction=direction,
                            predictor=_cka_predictor() if name == "predictor" else None)
    assert prior.ranking[0] == block and prior.source == name
    assert all(len(v) == N for v in prior.evidence["values"].values())  # the statistics behind the ranking
    out = run(sel, prior=prior, space=SearchSpace(max_blocks=2), budget=10)
    assert [r.selection for r in out.records][0] == (block,)  # top-1 first, then top-2
    assert sorted(out.records[1].selection) == sorted(prior.ranking[:2])
    assert out.stop_reason == "selector finished"


def test_zero_cost_selectors_are_registered_and_check_their_direction():
    assert {"predictor", "rgn", "auto-rgn", "cka", "logme"} <= set(SELECTORS)
    assert get_selector("auto-rgn").name == "rgn" and get_selector("rgn").describe() == {"name": "rgn",
                                                                                          "direction": None}
    with pytest.raises(ConfigError, match="'direction'.*'cka'.*got 0.5"):
        get_selector("cka", direction=0.5)
    assert not TPESelector.fixed_prior and TPESelector.default_prior == "profile"
