"""The benchmark's strategy registry: every way to choose what to finetune, run under one compute allowance.

A strategy gets a :class:`CellContext` — the pretrained model, the task *without its test split*, the compute
allowance (in full-finetune-epoch equivalents, the unit of :class:`autosub.Budget`) and the shared training
settings — and returns an :class:`Outcome`: the chosen selection, its validation score and the trained model. The
runner, not the strategy, scores that model on the test split afterwards, so no strategy can select on test.

Baselines are tuned as fairly as the search: the linear probe is scikit-learn's ``LogisticRegression`` (a convex
solver) on the frozen pooled features the head receives, with ``C`` chosen on validation; full finetuning searches
its own learning rate on validation. Both are charged to the same allowance. ``autosub`` (the default) runs the
profile-prior TPE search with pruning *beside* its endpoints (the probe and full finetuning, computed within the
same allowance) and returns the best of the three on validation, so it never returns worse on validation than
the baselines it is compared with.

The zero-cost strategies — ``predictor`` (top-k of the learned layer predictor's ranking), ``tpe-predictor`` (TPE
with the predictor prior instead of the profile), and the peers' single statistics ``auto-rgn``, ``cka``, ``logme``
(top-k of that statistic's ranking) — run through ``search`` like every search strategy: the statistics are
computed inside the search, on the training split only, and their wall time is charged to the same allowance
(the search's ``"prior"`` phase). ``availability()`` says when a strategy's code is missing.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data.task import Task
from ..errors import AutoSubError, ConfigError
from ..hpo.budget import Budget
from ..hpo.config import RunConfig, TrainingConfig
from ..hpo.space import SearchSpace
from ..model.blocks import find_head
from ..training.setup import prepare
from ..training.trainer import evaluate, fit

__all__ = ["Allowance", "BaseStrategy", "BudgetExceeded", "CellContext", "Outcome", "get_strategy",
           "register_strategy", "strategy_names"]

log = logging.getLogger(__name__)


class BudgetExceeded(AutoSubError, RuntimeError):
    """A strategy asked for more compute than its allowance: the harness cuts it (the cell is marked over budget)."""


class Allowance:
    """The compute a strategy may spend, in full-FT epoch equivalents, on the runner's own clock.

    ``spent`` counts wall time since the allowance was opened divided by ``epoch_seconds``. ``check()`` raises
    :class:`BudgetExceeded` once the limit is passed; ``affords(c)`` says whether ``c`` more units still fit.
    """

    def __init__(self, limit: float, epoch_seconds: float) -> None:
        if not (limit > 0 and epoch_seconds > 0):
            raise ConfigError(f"An Allowance needs a positive limit and epoch_seconds; got {limit!r}, "
                              f"{epoch_seconds!r}.")
        self.limit, self.epoch_seconds = float(limit), float(epoch_seconds)
        self._t0 = time.perf_counter()

    @property
    def spent(self) -> float:
        return (time.perf_counter() - self._t0) / self.epoch_seconds

    @property
    def left(self) -> float:
        return self.limit - self.spent

    def affords(self, units: float) -> bool:
        return self.spent + units <= self.limit

    def check(self, what: str = "") -> None:
        if self.spent > self.limit:
            raise BudgetExceeded(f"{what or 'the strategy'} spent {self.spent:.2f} of {self.limit:g} full-FT epochs.")

    def budget(self, *, reserve: float = 0.0, trials: int | None = None) -> Budget:
        """An :class:`autosub.Budget` for what is left (less ``reserve``), in the same unit (and a trial cap)."""
        return Budget(compute=max(1e-3, self.left - reserve), trials=trials, epoch_seconds=self.epoch_seconds)


@dataclass
class CellContext:
    """Everything a strategy may use. ``task`` has no test split."""

    model: nn.Module
    task: Task
    allowance: Allowance
    seed: int
    epochs: int = 3
    batch_size: int = 32
    device: str | None = "cpu"
    max_blocks: int = 3
    lr: float = 1e-3  # the paper's fixed SubTuning lr (greedy, the profile)
    options: dict[str, Any] = field(default_factory=dict)

    def space(self, **kw: Any) -> SearchSpace:
        return SearchSpace(max_blocks=kw.pop("max_blocks", self.max_blocks), **kw)


@dataclass
class Outcome:
    """What a strategy chose. ``selection``: block indices, ``"probe"`` or ``"all"``."""

    selection: Any
    val_score: float
    model: nn.Module
    hparams: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class BaseStrategy:
    """A benchmark strategy: ``run(ctx) -> Outcome``; ``availability()`` → None or why it cannot run here."""

    name: str = "base"
    family: str = "subtuning"  # "probe" | "full" | "subtuning": which claims it counts for
    requires: tuple[str, ...] = ()

    def availability(self) -> str | None:
        for mod in self.requires:
            try:
                if importlib.util.find_spec(mod) is None:
                    return f"module {mod!r} does not exist (on another branch?)"
            except (ImportError, ValueError):
                return f"module {mod!r} does not exist (on another branch?)"
        return None

    def run(self, ctx: CellContext) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "class": type(self).__name__}


_REGISTRY: dict[str, Callable[[], BaseStrategy]] = {}


def register_strategy(name: str, factory: Callable[[], BaseStrategy], *, overwrite: bool = False) -> None:
    """Register ``factory()`` (a BaseStrategy, or a class) under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"A benchmark strategy named {name!r} is already registered; pass overwrite=True.")
    _REGISTRY[name] = factory


def get_strategy(name: str | BaseStrategy) -> BaseStrategy:
    """A fresh instance of the strategy ``name`` (a BaseStrategy passes through)."""
    if isinstance(name, BaseStrategy):
        return name
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown benchmark strategy {name!r}; registered: {strategy_names()}.")
    strat = _REGISTRY[name]()
    strat.name = name
    return strat


def strategy_names() -> list[str]:
    return list(_REGISTRY)


# ------------------------------------------------------------------------------------------------ baselines
def pooled_features(model: nn.Module, split: Any, *, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """The head's input for every example of ``split`` (a forward pre-hook on the head module), as float64."""
    from ..data.task import take, to_device
    from ..model.splitting import eval_mode

    names = find_head(model)
    if len(names) != 1 or not isinstance(model.get_submodule(names[0]), nn.Linear):
        raise ConfigError(f"The linear probe needs one nn.Linear head; {type(model).__name__} has {names}.")
    head = model.get_submodule(names[0])
    got: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach().float().cpu()))
    try:
        with eval_mode(model), torch.no_grad():
            for s in range(0, len(split), batch_size):
                idx = torch.arange(s, min(s + batch_size, len(split)))
                model(to_device(take(split.inputs, idx), device))
    finally:
        handle.remove()
    return torch.cat(got).flatten(1).double().numpy()


class LinearProbe(BaseStrategy):
    """scikit-learn logistic regression on the frozen pooled features; ``C`` chosen on validation (a convex solver).

    The fitted classifier (standardization folded in) becomes the network's linear head, so the runner scores it
    on test like any other model.
    """

    family = "probe"

    def __init__(self, Cs: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)) -> None:
        self.Cs = tuple(Cs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "Cs": list(self.Cs), "stops_when_spent": True}

    def run(self, ctx: CellContext) -> Outcome:
        from sklearn.linear_model import LogisticRegression

        setup = prepare(ctx.model, ctx.task, seed=ctx.seed, device=ctx.device)
        work, dev = setup.work, setup.device
        xtr = pooled_features(work, ctx.task.train, device=dev)
        xva = pooled_features(work, ctx.task.val, device=dev)
        ytr, yva = ctx.task.train.targets.numpy(), ctx.task.val.targets.numpy()
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        ztr, zva = (xtr - mu) / sd, (xva - mu) / sd
        best: tuple[float, float, Any] | None = None
        tried = {}
        for c in self.Cs:  # ascending C: ties keep the more regularized model
            if best is not None and ctx.allowance.left <= 0:
                break  # out of allowance: keep the best C so far (one solve always runs)
            clf = LogisticRegression(C=c, max_iter=2000, random_state=ctx.seed).fit(ztr, ytr)
            score = float((clf.predict(zva) == yva).mean())
            tried[str(c)] = score
            if best is None or score > best[0]:
                best = (score, c, clf)
        assert best is not None
        score, c, clf = best
        _set_linear_head(work, clf, mu, sd, setup.num_classes)
        check = evaluate(work, ctx.task.val, device=dev)
        return Outcome("probe", check, work, {"C": c}, {"val_by_C": tried, "sklearn_val": score})


def _set_linear_head(model: nn.Module, clf: Any, mu: np.ndarray, sd: np.ndarray, num_classes: int) -> None:
    """Write a fitted (standardized-input) logistic regression into the model's linear head."""
    head = model.get_submodule(find_head(model)[0])
    coef = np.asarray(clf.coef_, dtype=np.float64) / sd
    inter = np.asarray(clf.intercept_, dtype=np.float64) - coef @ mu
    classes = list(clf.classes_)
    w = np.zeros((num_classes, coef.shape[1]))
    b = np.full(num_classes, -1e4)  # a class absent from train can never win
    if coef.shape[0] == 1:  # binary: logits (-z/2, z/2)
        w[classes[0]], w[classes[1]] = -coef[0] / 2, coef[0] / 2
        b[classes[0]], b[classes[1]] = -inter[0] / 2, inter[0] / 2
    else:
        for row, cls in enumerate(classes):
            w[cls], b[cls] = coef[row], inter[row]
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(torch.as_tensor(b, dtype=head.bias.dtype))


class FullFinetune(BaseStrategy):
    """Every parameter trains; its own search on validation within the same allowance as every other strategy: the
    learning rate from ``lrs`` at the harness's epoch count, then the best learning rate again with twice, four
    times, … the epochs while the allowance affords the next run (validation keeps the best run). Low-data full
    finetuning is mostly short of optimizer steps; giving it the allowance's leftover as longer runs is what a
    practitioner tuning it by hand would do, so the comparison does not flatter the selectors."""

    family = "full"

    def __init__(self, lrs: Sequence[float] = (3e-4, 1e-3, 3e-3), *, longer: bool = True, share: float = 1.0,
                 max_factor: int | None = None) -> None:
        if not 0 < share <= 1:
            raise ConfigError(f"The 'share' parameter of FullFinetune must be in (0, 1]; got {share!r} instead.")
        self.lrs, self.longer, self.share, self.max_factor = tuple(lrs), longer, float(share), max_factor

    def describe(self) -> dict[str, Any]:
        # only when set: the baseline's description, and so its cells' fingerprint, stays unchanged
        limits = {"share": self.share, "max_factor": self.max_factor} if self.share < 1 or self.max_factor else {}
        return {**super().describe(), "lrs": list(self.lrs), "longer": self.longer, "schedule": "doubling", **limits}

    def _affords(self, ctx: CellContext, units: float) -> bool:
        """Whether ``units`` more fit in the allowance and in this strategy's share of it."""
        return ctx.allowance.affords(units) and ctx.allowance.spent + units <= self.share * ctx.allowance.limit

    def run(self, ctx: CellContext) -> Outcome:
        best, tried = None, {}

        def one(lr: float, epochs: int) -> None:
            nonlocal best
            res = fit(ctx.model, ctx.task, "all", epochs=epochs, lr=lr, batch_size=ctx.batch_size, seed=ctx.seed,
                      device=ctx.device, cache=False, keep_model=True)
            tried[f"lr={lr:g},epochs={epochs}"] = float(res.score)
            if best is None or res.score > best.score:  # ties keep the earlier (shorter) run
                best = res

        for lr in self.lrs:
            if best is not None and not self._affords(ctx, ctx.epochs * 1.05):
                break  # the next fit would not fit in the allowance
            one(lr, ctx.epochs)
        assert best is not None
        lr, epochs = best.hparams["lr"], 2 * ctx.epochs
        top = ctx.epochs * self.max_factor if self.max_factor else math.inf
        while self.longer and epochs <= top and self._affords(ctx, epochs * 1.05):
            one(lr, epochs)
            epochs *= 2
        return Outcome("all", float(best.score), best.model, {"lr": best.hparams["lr"], "epochs": best.epochs},
                       {"val_by_run": tried})


# --------------------------------------------------------------------------------------------- via search()
class SearchStrategy(BaseStrategy):
    """``autosub.search`` with a selector / prior / pruner, its Budget set to the allowance (the same unit)."""

    def __init__(self, selector: str, *, prior: Any = None, pruner: Any = None, max_blocks: int | None = None,
                 cv_folds: int | None = None, lr: float | None = None) -> None:
        self.selector, self.prior, self.pruner = selector, prior, pruner
        self.max_blocks, self.cv_folds, self.lr = max_blocks, cv_folds, lr
        self.trials: int | None = None  # an optional trial cap beside the compute allowance (set by the runner)

    def prior_for(self, ctx: CellContext) -> Any:
        return self.prior

    def search(self, ctx: CellContext, *, reserve: float = 0.0) -> Any:
        from ..hpo.searching import search

        prior = self.prior_for(ctx)
        space_kw: dict[str, Any] = {"max_blocks": self.max_blocks or ctx.max_blocks}
        if self.lr is not None:
            space_kw["lr"] = self.lr
        with tempfile.TemporaryDirectory(prefix="autosub-bench-") as tmp:
            return search(ctx.model, ctx.task, ctx.allowance.budget(reserve=reserve, trials=self.trials), selector=self.selector,
                          space=ctx.space(**space_kw), prior=prior, pruner=self.pruner, epochs=ctx.epochs,
                          training=TrainingConfig(batch_size=ctx.batch_size, device=ctx.device,
                                                  cv_folds=self.cv_folds),
                          run=RunConfig(run_dir=tmp, progress=False), seed=ctx.seed)

    def run(self, ctx: CellContext) -> Outcome:
        res = self.search(ctx)
        return _from_search(res)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "selector": self.selector, "prior": _prior_name(self.prior),
                "pruner": self.pruner, "max_blocks": self.max_blocks, "cv_folds": self.cv_folds}


def _prior_name(prior: Any) -> Any:
    return prior if prior is None or isinstance(prior, str) else type(prior).__name__


def _from_search(res: Any) -> Outcome:
    prior = res.prior or {}
    extra = {"trials": res.spent.get("trials"), "stop_reason": res.spent.get("stop_reason"),
             "search_compute": res.spent.get("compute"), "phases": res.spent.get("phases"),
             "uncertainty": res.config.get("uncertainty"), "block_names": res.config.get("block_names"),
             "prior_source": prior.get("source"), "prior_ranking": prior.get("ranking"),
             # the per-task profile plot reads these as validation accuracies: a profile's only
             "prior_scores": _prior_scores(prior) if prior.get("source") == "profile" else None}
    if (prior.get("evidence") or {}).get("wall_time") is not None:
        extra["prior_seconds"] = prior["evidence"]["wall_time"]
    return Outcome(tuple(int(b) for b in res.selection), float(res.score), res.model,
                   {k: res.hparams.get(k) for k in ("lr", "weight_decay")}, extra)


def _prior_scores(prior: dict) -> list[float] | None:
    """The per-block profile scores a search used as its prior (for the per-task profile plot)."""
    for key in ("scores", "raw", "values"):
        v = prior.get(key) if isinstance(prior, dict) else None
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) or x is None for x in v):
            return [float(x) if x is not None and math.isfinite(x) else float("nan") for x in v]
        if isinstance(v, dict) and v:
            n = max(int(k) for k in v) + 1
            return [float(v.get(str(i), v.get(i, float("nan")))) for i in range(n)]
    return None


class WithEndpoints(SearchStrategy):
    """autosub's default: the profile-prior TPE search with pruning, *beside* the linear probe and full finetuning.

    Full finetuning runs first — the baseline's own search (``endpoint_lrs``, then the best learning rate with
    doubling epochs) within ``endpoint_share`` of the allowance, since at a few hundred examples long full
    finetuning is often the best choice —, then the probe's convex ``C`` search, then the search with what is
    left. The best of the three on validation is returned (ties: fewer trainable parameters — the probe, then the
    subset, then full finetuning). Under cross-validation the search's best
    trial is re-scored on the validation split so the three are compared on the same examples.
    """

    def __init__(self, *, cv_folds: int | None = None, endpoint_lrs: Sequence[float] = (3e-4, 3e-3),
                 endpoint_share: float = 0.5) -> None:
        super().__init__("tpe", prior="profile", pruner="auto", cv_folds=cv_folds)
        self.endpoint_lrs, self.endpoint_share = tuple(endpoint_lrs), float(endpoint_share)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "endpoint_lrs": list(self.endpoint_lrs), "endpoints": ["probe", "full"],
                "endpoint_schedule": "doubling", "endpoint_share": self.endpoint_share,
                "order": "full, probe, search", "probe": LinearProbe().describe()}

    def run(self, ctx: CellContext) -> Outcome:
        # The endpoints first — full finetuning (its cost is predictable: about ``epochs`` units), then the convex
        # probe over its whole C grid — and the search gets the rest (it is the part that uses any budget well).
        lrs = tuple(ctx.options.get("endpoint_lrs", self.endpoint_lrs))  # a configuration may set its own
        endpoint = FullFinetune(lrs, share=self.endpoint_share, max_factor=8)  # the baseline's schedule, in its share
        full = endpoint.run(ctx) if ctx.allowance.affords(3 * ctx.epochs) else None
        probe = LinearProbe().run(ctx)
        try:
            res, failed = self.search(ctx), None
        except AutoSubError as exc:  # e.g. nothing left for one trial: the endpoints still stand
            log.warning("autosub strategy: the search failed (%s); choosing between the endpoints", exc)
            res, failed = None, str(exc)
        options = [("probe", probe.val_score, probe)]
        if full is not None:
            options.append(("full", full.val_score, full))
        if res is None:
            name, val, chosen = max(options, key=lambda o: (o[1], -{"probe": 0, "full": 2}[o[0]]))
            return Outcome(chosen.selection, val, chosen.model, chosen.hparams,
                           {"chosen": name, "search_failed": failed})
        sub = _from_search(res)
        sub_val = float(evaluate(res.model, ctx.task.val, device=ctx.device)) if self.cv_folds else sub.val_score
        options.append(("subset", sub_val, sub))
        rank = {"probe": 0, "subset": 1, "full": 2}
        name, val, chosen = max(options, key=lambda o: (o[1], -rank[o[0]]))
        extra = {**sub.extra, "endpoints": {"probe": probe.val_score, "full": full.val_score if full else None,
                                            "full_lr": full.hparams.get("lr") if full else None,
                                            "subset": sub_val, "subset_selection": list(sub.selection),
                                            "subset_search_score": sub.val_score},
                 "chosen": name}
        return Outcome(chosen.selection, val, chosen.model, chosen.hparams, extra)


class ZeroCostStrategy(SearchStrategy):
    """A search whose ranking comes from network statistics (no profile), their seconds charged to the allowance.
    Its description names the shipped corpus, so cells made with another corpus or predictor are recomputed."""

    def describe(self) -> dict[str, Any]:
        from ..selection.predictor import shipped_fingerprint

        return {**super().describe(), "corpus": shipped_fingerprint()}


def _zero_cost(selector: str, *, prior: str = "auto", pruner: Any = None) -> Callable[[], BaseStrategy]:
    return lambda: ZeroCostStrategy(selector, prior=prior, pruner=pruner)


register_strategy("linear-probe", LinearProbe)
register_strategy("full-ft", FullFinetune)
register_strategy("greedy", lambda: SearchStrategy("greedy", prior=None, pruner=None))
register_strategy("profile-top1", lambda: SearchStrategy("profile-top-k", prior="profile", max_blocks=1))
register_strategy("profile-topk", lambda: SearchStrategy("profile-top-k", prior="profile"))
register_strategy("random", lambda: SearchStrategy("random", prior=None, pruner=None))
register_strategy("tpe", lambda: SearchStrategy("tpe", prior=None, pruner="auto"))
register_strategy("tpe-prior", lambda: SearchStrategy("tpe", prior="profile", pruner="auto"))
register_strategy("autosub", WithEndpoints)
register_strategy("autosub-cv", lambda: WithEndpoints(cv_folds=5))
register_strategy("predictor", _zero_cost("predictor"))
register_strategy("tpe-predictor", _zero_cost("tpe", prior="predictor", pruner="auto"))
register_strategy("auto-rgn", _zero_cost("rgn"))
register_strategy("cka", _zero_cost("cka"))
register_strategy("logme", _zero_cost("logme"))
