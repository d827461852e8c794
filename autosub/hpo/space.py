"""What a search may try: ``SearchSpace`` (the user's spec) → ``BoundSpace`` (bound to one model's blocks).

A selection is encoded for Optuna as *fixed* parameters (Optuna cannot change a categorical's choices
between trials): ``subset`` has one boolean ``bNN`` per block, ``consecutive`` has ``start`` + ``length``,
``single`` has ``block``. Hyperparameters follow: ``lr`` (log scale), ``weight_decay``, and optional per-block
lr multipliers ``lrmNN`` (suggested only for the selected blocks). The number of epochs is the fidelity
(what the pruner cuts), not a searched parameter. Constraints (block count, trainable parameters, added
inference cost) are enforced *before* a trial trains: samplers call :meth:`BoundSpace.repair`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, check_positive
from ..model.cost import added_cost

log = logging.getLogger(__name__)

__all__ = ["KINDS", "Candidate", "SearchSpace", "BoundSpace"]

KINDS = ("subset", "consecutive", "single")
Range = tuple[float, float]


# ---------------------------------------------------------------------------------------------------- spaces
@dataclass
class Candidate:
    """One configuration to train: the selection and its hyperparameters."""

    selection: tuple[int, ...]
    lr: float
    weight_decay: float
    lr_multipliers: dict[int, float] = field(default_factory=dict)

    def hparams(self) -> dict[str, Any]:
        return {"lr": self.lr, "weight_decay": self.weight_decay,
                "lr_multipliers": {int(k): v for k, v in self.lr_multipliers.items()}}


@dataclass
class SearchSpace:
    """What to search: the selection family, its bounds, hyperparameter ranges and the deployment constraints.

    ``lr`` / ``weight_decay`` are a fixed number or a ``(low, high)`` range (log scale when low > 0);
    ``lr_multipliers=(low, high)`` adds one log-scale multiplier per selected block. ``max_blocks=None``
    means ``min(4, number of blocks)``.
    """

    kind: str = "subset"
    min_blocks: int = 1
    max_blocks: int | None = None
    lr: float | Range = (1e-4, 1e-2)
    weight_decay: float | Range = 0.05
    lr_multipliers: Range | None = None
    max_trainable_params: int | None = None
    max_added_cost: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"The 'space' parameter must be one of {KINDS} or a SearchSpace; got {self.kind!r} "
                              "instead.")
        if isinstance(self.min_blocks, bool) or not isinstance(self.min_blocks, int) or self.min_blocks < 0:
            raise ConfigError(f"The 'min_blocks' parameter of SearchSpace must be an int >= 0; got "
                              f"{self.min_blocks!r} instead.")
        if self.max_blocks is not None:
            check_positive("max_blocks", self.max_blocks, "SearchSpace", integer=True)
            if self.max_blocks < self.min_blocks:
                raise ConfigError(f"The 'max_blocks' parameter of SearchSpace ({self.max_blocks}) must be >= "
                                  f"min_blocks ({self.min_blocks}).")
        if self.kind != "subset" and self.min_blocks == 0:
            raise ConfigError(f"The 'min_blocks' parameter must be >= 1 for the {self.kind!r} space; got 0.")
        _check_range("lr", self.lr, positive=True)
        _check_range("weight_decay", self.weight_decay, positive=False)
        if self.lr_multipliers is not None:
            _check_range("lr_multipliers", self.lr_multipliers, positive=True, fixed_ok=False)
        if self.max_trainable_params is not None:
            check_positive("max_trainable_params", self.max_trainable_params, "SearchSpace", integer=True)
        if self.max_added_cost is not None:
            check_positive("max_added_cost", self.max_added_cost, "SearchSpace")

    @classmethod
    def of(cls, value: SearchSpace | str) -> SearchSpace:
        if isinstance(value, SearchSpace):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"The 'space' parameter of search must be one of {KINDS} or a SearchSpace; got "
                              f"{value!r} instead.")
        return cls(kind=value)

    @property
    def default_lr(self) -> float:
        return _center(self.lr)

    @property
    def default_weight_decay(self) -> float:
        return _center(self.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def bind(self, block_params: Sequence[int], *, head_params: int = 0,
             fork_share: Sequence[float] | None = None) -> BoundSpace:
        """Attach the model's blocks (parameter counts, per-boundary added cost) and check a selection can exist."""
        return BoundSpace(self, list(block_params), head_params, list(fork_share) if fork_share else None)


class BoundSpace:
    """A SearchSpace for one model: encodes/decodes Optuna params, checks and repairs constraints."""

    def __init__(self, spec: SearchSpace, block_params: list[int], head_params: int,
                 fork_share: list[float] | None) -> None:
        self.spec = spec
        self.n = len(block_params)
        if self.n < 1:
            raise ConfigError("The model has no blocks to search over.")
        self.block_params = block_params
        self.head_params = head_params
        self.fork_share = fork_share  # added cost when the first tuned block is i (len n+1; [n] = head only)
        self.max_blocks = min(self.n, spec.max_blocks or 4)
        self.min_blocks = min(spec.min_blocks, self.max_blocks)
        self.kind = spec.kind
        width = max(2, len(str(self.n - 1)))
        self.block_names = [f"b{i:0{width}d}" for i in range(self.n)]
        self.mult_names = [f"lrm{i:0{width}d}" for i in range(self.n)]
        if spec.max_added_cost is not None and fork_share is None:
            raise ConfigError("max_added_cost needs the model's FLOP profile (fork_share); none was given.")
        if not any(self.violation((i,), check_min=False) is None for i in range(self.n)):
            raise ConfigError(
                f"No selection satisfies the constraints (max_trainable_params={spec.max_trainable_params}, "
                f"max_added_cost={spec.max_added_cost}): the smallest block alone has "
                f"{min(block_params) + head_params} trainable parameters. Loosen them.")

    # -- structure ------------------------------------------------------------------------------------------
    @property
    def structure_names(self) -> list[str]:
        return {"subset": self.block_names, "consecutive": ["start", "length"], "single": ["block"]}[self.kind]

    def encode(self, selection: Sequence[int], *, defaults: bool = False) -> dict[str, Any]:
        """Optuna params for ``selection``; with ``defaults`` also every searched hyperparameter at its default."""
        sel = sorted(set(int(i) for i in selection))
        if self.kind == "subset":
            params: dict[str, Any] = {name: i in sel for i, name in enumerate(self.block_names)}
        elif self.kind == "consecutive":
            if not sel or sel != list(range(sel[0], sel[-1] + 1)):
                raise ConfigError(f"Selection {tuple(sel)} is not consecutive; it cannot be encoded in this space.")
            params = {"start": sel[0], "length": len(sel)}
        else:
            if len(sel) != 1:
                raise ConfigError(f"The 'single' space holds one block; got selection {tuple(sel)}.")
            params = {"block": sel[0]}
        if defaults:
            for name in ("lr", "weight_decay"):
                if isinstance(getattr(self.spec, name), tuple):
                    params[name] = _center(getattr(self.spec, name))
            if self.spec.lr_multipliers is not None:
                lo, hi = self.spec.lr_multipliers
                params.update({self.mult_names[i]: min(max(1.0, lo), hi) for i in sel})
        return params

    def decode(self, params: Mapping[str, Any]) -> Candidate:
        """The Candidate that ``params`` (a trial's params) stand for."""
        if self.kind == "subset":
            sel = tuple(i for i, name in enumerate(self.block_names) if params.get(name))
        elif self.kind == "consecutive":
            start = int(params["start"])
            sel = tuple(range(start, min(self.n, start + int(params["length"]))))
        else:
            sel = (int(params["block"]),)
        mults = {i: float(params[self.mult_names[i]]) for i in sel if self.mult_names[i] in params}
        return Candidate(sel, float(params.get("lr", _center(self.spec.lr))),
                         float(params.get("weight_decay", _center(self.spec.weight_decay))), mults)

    def structure_distributions(self) -> dict[str, Any]:
        """The Optuna distribution of every structure parameter (the same in every trial)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

        if self.kind == "subset":
            return {name: CategoricalDistribution([False, True]) for name in self.block_names}
        if self.kind == "consecutive":
            return {"start": IntDistribution(0, self.n - 1),
                    "length": IntDistribution(max(1, self.min_blocks), self.max_blocks)}
        return {"block": IntDistribution(0, self.n - 1)}

    def suggest(self, trial: Any) -> Candidate:
        """Ask an Optuna trial for every parameter of this space (structure first, a fixed set every time)."""
        for name, dist in self.structure_distributions().items():
            if self.kind == "subset":
                trial.suggest_categorical(name, dist.choices)
            else:
                trial.suggest_int(name, dist.low, dist.high)
        for name in ("lr", "weight_decay"):
            rng = getattr(self.spec, name)
            if isinstance(rng, tuple):
                trial.suggest_float(name, rng[0], rng[1], log=rng[0] > 0)
        cand = self.decode(trial.params)
        if self.spec.lr_multipliers is not None:
            lo, hi = self.spec.lr_multipliers
            for i in cand.selection:
                cand.lr_multipliers[i] = trial.suggest_float(self.mult_names[i], lo, hi, log=True)
        return cand

    # -- constraints ----------------------------------------------------------------------------------------
    def trainable_params(self, selection: Sequence[int]) -> int:
        return self.head_params + sum(self.block_params[i] for i in selection)

    def added_cost(self, selection: Sequence[int]) -> float | None:
        """The added inference cost of ``selection`` (None when the model's FLOPs could not be counted)."""
        return None if self.fork_share is None else added_cost(self.fork_share, tuple(selection))

    def violation(self, selection: Sequence[int], *, check_min: bool = True) -> str | None:
        """Why ``selection`` breaks the space's bounds or constraints, or None."""
        k = len(selection)
        if (check_min and k < self.min_blocks) or k > self.max_blocks:
            return f"{k} blocks (allowed {self.min_blocks}..{self.max_blocks})"
        cap = self.spec.max_trainable_params
        if cap is not None and self.trainable_params(selection) > cap:
            return f"{self.trainable_params(selection)} trainable parameters > max_trainable_params={cap}"
        cost = self.added_cost(selection)
        if self.spec.max_added_cost is not None and cost is not None and cost > self.spec.max_added_cost:
            return f"added inference cost {cost:.3f} > max_added_cost={self.spec.max_added_cost}"
        return None

    def feasible(self, selection: Sequence[int]) -> bool:
        return self.violation(selection) is None

    def repair(self, selection: Sequence[int], scores: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
        """Shrink or grow ``selection`` until it is feasible, dropping low-rated blocks (``scores``) first."""
        sel = sorted(set(int(i) for i in selection))
        noise = np.asarray(scores, dtype=float) + rng.uniform(0, 1e-6, self.n)  # random tie-break
        order = [int(i) for i in np.argsort(-noise)]
        if self.kind == "single":
            return tuple(sel) if len(sel) == 1 and self.feasible(sel) else (
                next(i for i in order if self.feasible((i,))),)
        while sel and self.violation(sel, check_min=False):
            cost = self.added_cost(sel)
            if self.spec.max_added_cost is not None and cost is not None and cost > self.spec.max_added_cost:
                drop = sel[0]  # the added cost depends only on the first tuned block
            elif self.kind == "consecutive":
                drop = sel[0] if noise[sel[0]] < noise[sel[-1]] else sel[-1]
            else:
                drop = min(sel, key=lambda i: noise[i])
            sel.remove(drop)
        if len(sel) >= self.min_blocks:
            return tuple(sel)
        if self.kind == "consecutive":
            return self._best_window(noise)
        for i in order:
            if len(sel) >= self.min_blocks:
                break
            if i not in sel and not self.violation(sorted(sel + [i]), check_min=False):
                sel = sorted(sel + [i])
        if not self.feasible(sel):
            singles = [i for i in order if self.feasible((i,))]
            sel = [singles[0]] if singles else sel
        return tuple(sel)

    def _best_window(self, scores: np.ndarray) -> tuple[int, ...]:
        windows = self.windows()
        return max(windows, key=lambda w: float(np.mean(scores[list(w)])))

    def windows(self) -> list[tuple[int, ...]]:
        """Every feasible consecutive selection."""
        out = []
        for length in range(max(1, self.min_blocks), self.max_blocks + 1):
            for start in range(0, self.n - length + 1):
                w = tuple(range(start, start + length))
                if self.feasible(w):
                    out.append(w)
        return out

    def sample(self, rng: np.random.Generator, weights: np.ndarray) -> tuple[int, ...]:
        """Draw a feasible selection: block ``i`` is picked with probability ∝ ``weights[i]`` (uniform = all ones)."""
        if self.kind == "single":
            p = weights / weights.sum()
            return self.repair((int(rng.choice(self.n, p=p)),), np.log(weights), rng)
        if self.kind == "consecutive":
            windows = self.windows()
            w = np.array([float(np.exp(np.mean(np.log(weights[list(win)])))) for win in windows])
            return windows[int(rng.choice(len(windows), p=w / w.sum()))]
        k = int(rng.integers(self.min_blocks, self.max_blocks + 1))
        p = weights / weights.sum()
        sel = rng.choice(self.n, size=k, replace=False, p=p)
        return self.repair(sel.tolist(), np.log(weights), rng)


def _center(value: float | Range) -> float:
    """The default of a range: its geometric mean (log scale) or midpoint."""
    if not isinstance(value, tuple):
        return float(value)
    lo, hi = value
    return float(math.sqrt(lo * hi)) if lo > 0 else (lo + hi) / 2


def _check_range(name: str, value: Any, *, positive: bool, fixed_ok: bool = True) -> None:
    """A fixed number or a (low, high) tuple with low < high."""
    ok_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (  # noqa: E731
        v > 0 if positive else v >= 0)
    if isinstance(value, tuple) and len(value) == 2 and all(ok_num(v) for v in value) and value[0] < value[1]:
        return
    if fixed_ok and ok_num(value):
        return
    need = "a (low, high) tuple" + (" or a number" if fixed_ok else "")
    sign = "> 0" if positive else ">= 0"
    raise ConfigError(f"The '{name}' parameter of SearchSpace must be {need} with finite values {sign} and low < high; "
                      f"got {value!r} instead.")
