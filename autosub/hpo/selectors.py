"""Selectors decide WHAT to try; engines (``autosub.hpo.engines``) RUN it. One small base class, a registry by name.

A selector gives an engine three things: an Optuna ``sampler`` for the parameters it leaves free, ``initial``
proposals (enqueued before the first trial, or known results recorded as finished trials) and ``propose``,
called after every trial for adaptive strategies (greedy) — ``None`` there means "done".

**The prior (``tpe``, the default).** A prior rates the blocks: a finetuning profile (by default ``search`` runs
one epoch per block inside the budget — the cheapest profile that still ranks blocks; or pass any Profile), a
predictor later, or any ``{block: score}``. It acts in three ways:

1. *Warm start.* The profile's single-block runs are real trials; when they were run with the search's
   hyperparameters they are recorded in the study as finished trials (COMPLETE when run for the search's
   epochs, else PRUNED with their score as the intermediate value at the epochs they ran) — TPE starts with
   one observation per block for free, and the profile's compute is never wasted.
2. *Enqueued first trials.* The best pairs (measured pairs if the profile has them, else pairs of the top-3
   blocks) and the top-3 set (plus the top singles when no warm start exists), on a small learning-rate ladder
   (the range's center, then a quarter of the log-range above and below) so TPE's lr model is not degenerate.
3. *Biased sampling.* :class:`StructuredSampler` wraps TPE. Block ``i`` gets weight ``exp(beta * z_i)``, ``z_i``
   the normal quantile of its rank in the prior (scale-free, robust to multi-fidelity scores). Until TPE has
   ``n_startup_trials`` observations, and afterwards in a ``prior_mix`` share of trials, the selection is drawn
   from these weights (a subset size uniform in the allowed range, blocks without replacement ∝ weight);
   otherwise TPE's own proposal is kept. Every proposal is repaired to satisfy the space's constraints
   (dropping the lowest-rated blocks first), so no trial is wasted on an infeasible selection.

Without a prior the same sampler draws uniformly (``tpe`` with ``prior=None``; ``random`` always).

**Zero-cost rankings.** ``search(prior="predictor")`` (the learned layer predictor) or ``prior="rgn"`` (any single
statistic of :mod:`autosub.selection.stats`) builds the prior from a few batches of the training data, with no
training. The selectors ``predictor``, ``rgn`` (Auto-RGN), ``cka`` and ``logme`` are ``profile-top-k`` over such a
ranking: the peers' single-statistic methods, run under the same budget and bookkeeping as every selector.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import optuna
from optuna.samplers import BaseSampler, RandomSampler, TPESampler

from ..errors import ConfigError
from ..selection.greedy_selection import accepts, choose_move
from ..selection.prior import Prior
from .space import KINDS, BoundSpace

__all__ = ["BaseSelector", "CKASelector", "GreedySelector", "LogMESelector", "NSGA2Selector", "PredictorSelector",
           "Prior", "Proposal", "RandomSelector", "RankedTopKSelector", "RGNSelector", "SELECTORS", "SelectorContext",
           "StatisticSelector", "StructuredSampler", "TPESelector", "TopKSelector", "get_selector", "profile_trials",
           "register_selector"]

log = logging.getLogger(__name__)

LADDER = (0, 1, -1)  # enqueued prior trials: lr = center · (high/low)^(step/4): center, above, below


@dataclass
class SelectorContext:
    """What a selector may know: the bound space, the prior, the seed and the search's settings."""

    space: BoundSpace
    prior: Prior | None = None
    seed: int = 0
    epochs: int = 1
    directions: tuple[str, ...] = ("maximize",)
    n_trials: int | None = None
    fit_defaults: dict[str, Any] = field(default_factory=dict)  # batch_size etc., to match a profile's runs

    def weights(self, beta: float) -> np.ndarray:
        """Per-block sampling weights: exp(beta * z) from the prior, uniform without one."""
        if self.prior is None:
            return np.ones(self.space.n)
        return np.exp(beta * self.prior.z(self.space.n))


@dataclass
class Proposal:
    """Params to enqueue; with ``values`` (or ``state="PRUNED"``) a result already known, recorded as finished."""

    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)
    values: list[float] | None = None
    state: str | None = None  # None: run it; "COMPLETE" / "PRUNED": record it as such
    intermediate: dict[int, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- sampler
class StructuredSampler(BaseSampler):
    """Wrap an Optuna sampler: draw/repair the block selection from prior weights, delegate everything else."""

    def __init__(self, base: BaseSampler, space: BoundSpace, *, weights: np.ndarray, seed: int = 0,
                 n_startup: int = 10, mix: float = 0.0, label: str = "prior") -> None:
        self.base, self.space, self.w = base, space, np.asarray(weights, dtype=float)
        self.seed, self.n_startup, self.mix, self.label = seed, n_startup, mix, label
        self._chosen: dict[int, tuple[dict[str, Any], str]] = {}

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        params = dict(self.base.sample_relative(study, trial, search_space))
        struct, _ = self._structure(study, trial, params)
        params.update({k: v for k, v in struct.items() if k in search_space})
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        if param_name in self.space.structure_names:
            return self._structure(study, trial, None)[0][param_name]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._chosen.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def proposed_by(self, number: int) -> str | None:
        """How trial ``number``'s selection was chosen: the wrapped sampler or the prior/random draw."""
        got = self._chosen.get(number)
        return got[1] if got else None

    def _structure(self, study, trial, relative: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
        if trial.number in self._chosen:
            return self._chosen[trial.number]
        rng = np.random.default_rng([self.seed, trial.number])
        names = self.space.structure_names
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        n_seen = len(study.get_trials(deepcopy=False, states=states))
        logw = np.log(self.w)
        if n_seen >= self.n_startup and rng.random() >= self.mix:
            values = dict(relative or {})
            if not all(n in values for n in names):  # an independent sampler (e.g. multi-objective TPE)
                dists = self.space.structure_distributions()
                values = {n: self.base.sample_independent(study, trial, n, dists[n]) for n in names}
            sel = self.space.repair(self.space.decode(values).selection, logw, rng)
            source = type(self.base).__name__
        else:
            sel = self.space.sample(rng, self.w)
            source = self.label
        struct = {k: v for k, v in self.space.encode(sel).items() if k in names}
        self._chosen[trial.number] = (struct, source)
        return struct, source


# ------------------------------------------------------------------------------------------------- selectors
class BaseSelector:
    """Decides what to try; an engine runs it (keras-tuner's split). Modelled on Optuna's ``BaseSampler``: a few
    hooks, each documented below, and capabilities declared as class attributes.

    An engine calls :meth:`sampler` once per run, :meth:`initial` for a new study (:meth:`propose` when it
    resumes one), and :meth:`propose` after every trial. The defaults make a selector that samples uniformly
    and has no plan of its own (``RandomSelector``); a fixed plan overrides ``initial``, an adaptive one
    ``propose`` too. Register a subclass with :func:`register_selector` to use it by name.
    """

    name: ClassVar[str] = "base"
    """The name ``search(selector=...)`` takes (set by :func:`register_selector`)."""
    kinds: ClassVar[tuple[str, ...]] = KINDS
    """The search-space kinds it works on (``"subset"``, ``"consecutive"``, ``"single"``)."""
    uses_prior: ClassVar[bool] = False
    """Whether ``search()`` builds a prior (a profile) for it; selectors without one never pay for it."""
    needs_prior: ClassVar[bool] = False
    """Whether it cannot work without a prior (``search(prior=None)`` is refused)."""
    default_prior: ClassVar[str] = "profile"
    """The prior ``search(prior="auto")`` (the default) builds for it when it uses one: ``"profile"``,
    ``"predictor"`` or a statistic's name (``"rgn"`` …)."""
    fixed_prior: ClassVar[bool] = False
    """Whether it ranks by its ``default_prior`` only: ``search`` refuses any other prior before any work."""
    prunable: ClassVar[bool] = True
    """Whether its trials may be stopped early (Optuna's pruner / Ray's ASHA); off for plans that compare
    finished scores (greedy)."""
    samples: ClassVar[bool] = True
    """Whether an engine may ask :meth:`sampler` for a trial when no proposal is queued. An adaptive plan that
    waits for its running trials sets it False; a subclass that overrides :meth:`propose` without declaring it
    gets False."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "propose" in cls.__dict__ and "samples" not in cls.__dict__:
            cls.samples = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def sampler(self, ctx: SelectorContext) -> BaseSampler:
        """The Optuna sampler for every parameter a proposal does not fix.

        Args:
            ctx: The bound space, the prior, the seed and the search's settings.

        Returns:
            An Optuna sampler; by default a :class:`StructuredSampler` drawing uniform feasible selections
            around a ``RandomSampler``.
        """
        return StructuredSampler(RandomSampler(seed=ctx.seed), ctx.space, weights=np.ones(ctx.space.n),
                                 seed=ctx.seed, n_startup=10**9, label="random")

    def initial(self, ctx: SelectorContext) -> list[Proposal] | None:
        """The first proposals of a new study, before any trial runs.

        Args:
            ctx: As for :meth:`sampler`.

        Returns:
            Proposals to enqueue, or to record as finished trials when they carry a known result (the
            profile's runs); ``[]`` to leave everything to the sampler; None when there is nothing to try.
        """
        return []

    def propose(self, ctx: SelectorContext, history: Sequence[Any]) -> list[Proposal] | None:
        """More proposals, after each trial (and when a study is resumed).

        Args:
            ctx: As for :meth:`sampler`.
            history: Every trial of the study so far, as :class:`~autosub.hpo.result.TrialRecord` (finished,
                running and waiting ones).

        Returns:
            Proposals to add (``[]``: none now); None when the strategy has nothing left to try — the search
            then stops once nothing waits or runs.
        """
        return []

    def describe(self) -> dict[str, Any]:
        """The selector's name and options as plain data (recorded in the study and ``SearchResult.config``).

        Returns:
            ``{"name": ..., **options}``.
        """
        return {"name": self.name, **self.options}


SELECTORS: dict[str, type[BaseSelector]] = {}


def register_selector(name: str, *aliases: str):
    """Class decorator: make a selector available to ``search(selector=name)``."""

    def deco(cls: type[BaseSelector]) -> type[BaseSelector]:
        cls.name = name
        for key in (name, *aliases):
            SELECTORS[key] = cls
        return cls

    return deco


def get_selector(selector: str | BaseSelector, **options: Any) -> BaseSelector:
    """A selector instance from a registered name or an instance (validated before any work)."""
    if isinstance(selector, BaseSelector):
        return selector
    if not isinstance(selector, str) or selector.lower() not in SELECTORS:
        names = sorted({cls.name for cls in SELECTORS.values()})
        raise ConfigError(f"The 'selector' parameter of search must be one of {names} or a BaseSelector; got "
                          f"{selector!r} instead.")
    return SELECTORS[selector.lower()](**options)


@register_selector("random")
class RandomSelector(BaseSelector):
    """Uniform random selections (a uniform subset size within the bounds) and random hyperparameters."""


@register_selector("tpe")
class TPESelector(BaseSelector):
    """Optuna's TPE wrapped by :class:`StructuredSampler`, warm-started and biased by the prior (module docs)."""

    uses_prior = True

    def __init__(self, *, n_startup_trials: int = 8, beta: float = 1.0, prior_mix: float = 0.25,
                 n_initial: int | None = None, warm_start: bool = True) -> None:
        super().__init__(n_startup_trials=n_startup_trials, beta=beta, prior_mix=prior_mix, n_initial=n_initial,
                         warm_start=warm_start)
        self.n_startup, self.beta, self.mix, self.n_initial, self.warm = (n_startup_trials, beta, prior_mix,
                                                                          n_initial, warm_start)

    def _base(self, ctx: SelectorContext) -> BaseSampler:
        return TPESampler(seed=ctx.seed, n_startup_trials=self.n_startup)

    def sampler(self, ctx: SelectorContext) -> BaseSampler:
        has = ctx.prior is not None
        return StructuredSampler(self._base(ctx), ctx.space, weights=ctx.weights(self.beta), seed=ctx.seed,
                                 n_startup=self.n_startup, mix=self.mix if has else 0.0,
                                 label="prior" if has else "random")

    def initial(self, ctx: SelectorContext) -> list[Proposal]:
        if ctx.prior is None:
            return []
        space, ranking = ctx.space, ctx.prior.ranking
        warm = profile_trials(ctx) if self.warm else []
        cands: list[tuple[tuple[int, ...], str]] = []
        if not warm or space.kind == "single":
            cands += [((b,), "prior:single") for b in ranking[:3]]
        if space.kind == "subset":
            pairs = [p for p, _ in ctx.prior.pairs[:2]] or [(ranking[0], ranking[j]) for j in (1, 2)] + [
                tuple(ranking[1:3])]
            cands += [(tuple(p), "prior:pair") for p in pairs if len(ranking) > 2 or len(p) == 2]
            cands.append((tuple(ranking[:3]), "prior:top3"))
        elif space.kind == "consecutive":
            z = ctx.prior.z(space.n)
            for length in (2, 3):
                wins = [w for w in space.windows() if len(w) == length]
                if wins:
                    cands.append((max(wins, key=lambda w: float(z[list(w)].mean())), f"prior:window{length}"))
        limit = self.n_initial if self.n_initial is not None else (
            6 if ctx.n_trials is None else min(6, max(2, ctx.n_trials // 3)))
        rng = np.random.default_rng(ctx.seed)
        seen: set[tuple[int, ...]] = {tuple(sorted(p.user_attrs["selection"])) for p in warm}
        out = []
        for sel, why in cands:
            sel = space.repair(sel, ctx.prior.z(space.n), rng)
            if sel in seen or len(out) >= limit:
                continue
            seen.add(sel)
            params = space.encode(sel, defaults=True)
            if isinstance(space.spec.lr, tuple):  # a small lr ladder: TPE sees lr diversity from the start
                lo, hi = space.spec.lr
                params["lr"] = float(np.clip(params["lr"] * (hi / lo) ** (0.25 * LADDER[len(out) % 3]), lo, hi))
            out.append(Proposal(params, {"proposed_by": why}))
        return warm + out


@register_selector("nsga2", "nsgaii")
class NSGA2Selector(TPESelector):
    """NSGA-II (for multi-objective searches), with the same prior handling as ``tpe``."""

    def _base(self, ctx: SelectorContext) -> BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=ctx.seed, population_size=max(8, self.n_startup))


@register_selector("profile-top-k", "top-k", "profile_top_k", "topk")
class TopKSelector(BaseSelector):
    """The paper's profile heuristic: train the k best-rated blocks together, for k = 1 .. max_blocks."""

    uses_prior = needs_prior = True
    samples = False
    kinds = ("subset", "single")

    def initial(self, ctx: SelectorContext) -> list[Proposal]:
        assert ctx.prior is not None
        rng = np.random.default_rng(ctx.seed)
        out, seen = [], set()
        k_max = ctx.space.max_blocks if ctx.space.kind == "subset" else 1
        for k in range(1, k_max + 1):
            ranking = ctx.prior.ranking if ctx.space.kind == "subset" else ctx.prior.ranking[k - 1:]
            sel = ctx.space.repair(ranking[:k], ctx.prior.z(ctx.space.n), rng)
            if sel not in seen:
                seen.add(sel)
                out.append(Proposal(ctx.space.encode(sel, defaults=True), {"proposed_by": f"top-{k}"}))
        return out

    def propose(self, ctx: SelectorContext, history: Sequence[Any]) -> list[Proposal] | None:
        pending = any(r.state in ("WAITING", "RUNNING") for r in history)
        return [] if pending else None


class RankedTopKSelector(TopKSelector):
    """``profile-top-k`` over a ranking got with no training (its ``default_prior``): k = 1 .. max_blocks.

    The ranking itself trains nothing (a few forward/backward passes, seconds); the k top-k sets are then
    trained like any trial, so the result has a validation score and a model, and the best k wins on validation.
    Not registered: the subclasses below name the ranking.
    """

    fixed_prior = True


@register_selector("predictor")
class PredictorSelector(RankedTopKSelector):
    """Top-k of the learned layer predictor's ranking (:func:`autosub.predict_blocks`)."""

    default_prior = "predictor"


class StatisticSelector(RankedTopKSelector):
    """Top-k of one network statistic's ranking (a peer's single-statistic selector).

    Args:
        direction: +1 = a higher value is a better block to tune (the peers' published rule for Auto-RGN, CKA and
            LogME), −1 = lower, None (default) = the orientation the statistic has on autosub's shipped corpus of
            measured profiles (:func:`autosub.selection.predictor.corpus_directions`) — the stronger of the two
            there, the same as ``benchmarks/bench_predictor.py`` compares the predictor against.
    """

    def __init__(self, *, direction: float | None = None) -> None:
        if direction is not None and (isinstance(direction, bool) or direction not in (1, -1)):
            raise ConfigError(f"The 'direction' parameter of the {self.name!r} selector must be +1, -1 or None (the "
                              f"shipped corpus's orientation); got {direction!r} instead.")
        super().__init__(direction=direction)
        self.direction = None if direction is None else float(direction)


@register_selector("rgn", "auto-rgn")
class RGNSelector(StatisticSelector):
    """Auto-RGN (Lee et al. 2023): blocks ranked by their relative gradient norm ‖∇W‖/‖W‖ with a fresh head."""

    default_prior = "rgn"


@register_selector("cka")
class CKASelector(StatisticSelector):
    """CKA-based selection: blocks ranked by 1 − linear CKA of their input and output."""

    default_prior = "cka"


@register_selector("logme")
class LogMESelector(StatisticSelector):
    """LogME (You et al. 2021) of each block's pooled output as the block's rating."""

    default_prior = "logme"


@register_selector("greedy")
class GreedySelector(BaseSelector):
    """Forward greedy SubTuning (the paper's): add the block that helps most; stop when the gain is < ``epsilon``.

    The rule of :func:`autosub.selection.greedy_selection.greedy` — the same functions,
    :func:`~autosub.selection.greedy_selection.choose_move` (ties go to the lower block index) and
    :func:`~autosub.selection.greedy_selection.accepts` (forward, ``stopping="strict"``: stop at the first step
    whose best gain is below ε); at most the space's ``max_blocks`` —, run trial by trial
    inside the engine, so it obeys the budget, resumes from storage and is counted like every selector. One
    difference: the search space has no linear probe (``min_blocks`` ≥ 1), so the first block is always added.
    Hyperparameters stay at the space's defaults, as in the paper.
    """

    prunable = False
    samples = False
    kinds = ("subset",)

    def __init__(self, *, epsilon: float = 0.005) -> None:
        super().__init__(epsilon=epsilon)
        self.epsilon = epsilon

    def initial(self, ctx: SelectorContext) -> list[Proposal]:
        return self._step(ctx, (), 0)

    def propose(self, ctx: SelectorContext, history: Sequence[Any]) -> list[Proposal] | None:
        mine = [r for r in history if "greedy_step" in r.user_attrs]
        if any(r.state in ("WAITING", "RUNNING") for r in mine):
            return []
        if not mine:
            return self._step(ctx, (), 0)
        base: tuple[int, ...] = ()
        prev_score = -np.inf  # the space has no linear probe: the first block is always added
        last = max(int(r.user_attrs["greedy_step"]) for r in mine)
        for step in range(last + 1):  # replay the path: each step's move from the one before it
            scores = {b: r.values[0] for r in mine if int(r.user_attrs["greedy_step"]) == step
                      and r.state == "COMPLETE" and r.values
                      for b in set(r.selection or ()) - set(base)}
            if not scores:
                return None
            chosen = choose_move(scores)
            gain = scores[chosen] - prev_score
            if step == last and not accepts(gain, self.epsilon):
                log.info("greedy: step %d gains %.4f < epsilon=%g; done", step, gain, self.epsilon)
                return None
            base, prev_score = tuple(sorted({*base, chosen})), scores[chosen]
        return self._step(ctx, base, last + 1) or None

    def _step(self, ctx: SelectorContext, base: tuple[int, ...], step: int) -> list[Proposal]:
        space = ctx.space
        if len(base) >= space.max_blocks:
            return []
        out = []
        for j in range(space.n):
            sel = tuple(sorted({*base, j}))
            if j not in base and not space.violation(sel, check_min=False):
                out.append(Proposal(space.encode(sel, defaults=True),
                                    {"greedy_step": step, "proposed_by": f"greedy:{step}"}))
        return out


def profile_trials(ctx: SelectorContext) -> list[Proposal]:
    """The profile's single-block runs as finished trials, when they used the search's hyperparameters."""
    prior, space = ctx.prior, ctx.space
    prof = prior.profile if prior is not None else None
    cfg = dict(getattr(prof, "config", {}) or {})
    if prof is None or len(ctx.directions) > 1 or ctx.fit_defaults.get("cv_folds"):
        return []  # a validation-split score is not a cross-validated one: no warm start under CV
    same = (abs(float(cfg.get("lr", -1)) - space.spec.default_lr) < 1e-12
            and abs(space.spec.default_weight_decay - 0.05) < 1e-12
            and cfg.get("batch_size") == ctx.fit_defaults.get("batch_size", 32)
            and cfg.get("seed") == ctx.seed and space.spec.lr_multipliers is None)
    if not same:
        return []
    out = []
    for e in prof.entries:
        sel = (int(e.block),)
        if e.block is None or space.violation(sel, check_min=False) or e.epochs > ctx.epochs:
            continue
        steps = {int(k): float(np.mean(v)) for k, v in (e.history or {e.epochs: e.scores}).items()}
        done = e.epochs == ctx.epochs
        out.append(Proposal(space.encode(sel, defaults=True),
                            {"proposed_by": "profile", "selection": list(sel), "curve": [], "compute": 0.0},
                            values=[float(e.mean)] if done else None, state="COMPLETE" if done else "PRUNED",
                            intermediate=steps))
    return out
