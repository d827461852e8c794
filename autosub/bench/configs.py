"""Named benchmark configurations: what to run (tasks × sizes × seeds × strategies) and how (budget, epochs, …).

``micro`` is the tests' (a timm test model on digits at 16 px), ``quick`` shows every output in ≤ 5 minutes on an
idle 2-core CPU (estimated; see the README),  ``cpu`` is the ≤ 60-minute CPU suite, ``cpu-breadth`` and
``cpu-text`` widen it over every image pair and the text tasks, ``cpu-all`` trains on all the data (claim C2), ``search`` is the former ``benchmarks/bench_search.py`` (five
search strategies on one task at equal compute: greedy, random, TPE without a prior, with the profile prior and with
the learned predictor's prior), ``gpu`` the one-GPU suite at 224 px (``benchmarks/gpu_suite.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigError

__all__ = ["BenchConfig", "CONFIGS", "get_config"]


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration.

    Args:
        name: the results folder's name (``benchmarks/results/bench/<name>/``).
        tasks: registered task names (see :mod:`autosub.bench.tasks`).
        strategies: registered strategy names (see :mod:`autosub.bench.strategies`).
        sizes: training-set sizes (None = all the training data).
        seeds: the seeds; each drives the train/val split, the subsample, heads and samplers.
        budget: every strategy's compute allowance, in full-finetune-epoch equivalents (``Budget(compute=…)``).
        trials: an optional trial cap for the searches as well (the first limit reached stops; a cap that binds
            before the compute does makes a search independent of machine load).
        tolerance: a cell whose measured compute exceeds ``budget × (1 + tolerance)`` is flagged over budget and
            left out of the tables (the trial in flight when a search's budget runs out always finishes).
        epochs: epochs per fit (trials, full finetuning).
        min_steps: at least this many optimizer steps per fit: on tiny training sets the epochs per fit grow to
            ``ceil(min_steps × batch_size / n_train)`` and the budget grows by the same factor (it stays the same
            number of full-FT *fits*). 0: off.
        image_size / max_length: input resolution for image tasks / sequence length for text tasks.
        val_size: validation cap: an int, ``"quarter"`` (a quarter of the training size, 2–250 per… see
            :func:`autosub.bench.tasks.cap_val`) or None.
        max_blocks: the largest subset the searches consider.
        batch_size, device, threads: how fits run.
        endpoint_lrs / full_lrs / probe_Cs: the grids of autosub's full-FT endpoint, the full-FT baseline and the probe.
    """

    name: str
    tasks: tuple[str, ...]
    strategies: tuple[str, ...]
    sizes: tuple[int | None, ...] = (200,)
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: float = 12.0
    trials: int | None = None
    tolerance: float = 0.5
    epochs: int = 3
    min_steps: int = 0
    image_size: int = 32
    max_length: int = 32
    val_size: Any = "quarter"
    max_blocks: int = 3
    batch_size: int = 32
    device: str | None = "cpu"
    threads: int | None = None
    full_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks or not self.strategies or not self.sizes or not self.seeds:
            raise ConfigError("A BenchConfig needs at least one task, strategy, size and seed.")
        if not (self.budget > 0):
            raise ConfigError(f"The 'budget' parameter of BenchConfig must be > 0; got {self.budget!r} instead.")
        for s in self.sizes:
            if s is not None and (not isinstance(s, int) or s < 2):
                raise ConfigError(f"The 'sizes' of BenchConfig must be ints >= 2 or None (all); got {s!r}.")
        if self.tolerance < 0:
            raise ConfigError(f"The 'tolerance' parameter of BenchConfig must be >= 0; got {self.tolerance!r}.")

    def fit_epochs(self, n_train: int) -> int:
        """Epochs per fit on ``n_train`` examples (``epochs``, raised to reach ``min_steps`` steps)."""
        if not self.min_steps:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_steps * self.batch_size / max(1, n_train)))

    def budget_for(self, n_train: int) -> float:
        """The compute allowance on ``n_train`` examples (``budget``, scaled like the epochs per fit)."""
        return self.budget * self.fit_epochs(n_train) / self.epochs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(tasks=list(self.tasks), strategies=list(self.strategies), sizes=list(self.sizes),
                 seeds=list(self.seeds), full_lrs=list(self.full_lrs))
        return d

    def with_overrides(self, **kw: Any) -> "BenchConfig":
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items() if v is not None})


# Budgets: autosub's default profiles every block for one epoch as its prior (EfficientNet-Lite0: 16 blocks ≈ 9.2
# full-FT epochs at 32 px) and search() runs that profile only when it costs ≤ half of the search's budget, so a
# budget under ~19 (after the full-FT endpoint, which measured ~2.5 units per epoch under load) silently turns
# the default into TPE without a prior: every configuration that runs the default on Lite0 gives it 30. `quick` must
# finish in <= 5 min: at 100 examples it took 6.8 min idle (5.5 at a budget of 20), so it runs 50 examples.
ALL_STRATEGIES = ("linear-probe", "full-ft", "greedy", "profile-top1", "profile-topk", "random", "tpe", "tpe-prior",
                  "autosub", "autosub-cv", "predictor", "tpe-predictor", "auto-rgn", "cka", "logme")
REAL_TASKS = ("lite0-mnist", "lite0-digits", "lite0-animals", "lite1-mnist", "lite1-digits", "lite1-animals",
              "mbv2-mnist", "mbv2-digits", "mbv2-animals", "minilm-finefood", "minilm-rotten", "minilm-tweets")

CONFIGS: dict[str, BenchConfig] = {
    "micro": BenchConfig("micro", tasks=("test-digits",), strategies=("linear-probe", "random"), sizes=(60,),
                         seeds=(0,), budget=40.0, trials=3, tolerance=3.0, epochs=1, image_size=16, max_blocks=1,
                         full_lrs=(1e-3,), threads=1),
    "quick": BenchConfig("quick", tasks=("lite0-digits", "lite0-mnist"),
                         strategies=("linear-probe", "full-ft", "tpe", "autosub"), sizes=(50,), seeds=(0, 1),
                         budget=30.0, epochs=2, image_size=32, max_blocks=2, full_lrs=(3e-4, 1e-3, 3e-3)),
    "cpu": BenchConfig("cpu", tasks=("lite0-digits", "lite0-animals"),  # two unlike tasks: ≤ 60 min on 2 cores
                       strategies=("linear-probe", "full-ft", "greedy", "tpe", "autosub", "autosub-cv", "predictor"),
                       sizes=(50, 200), seeds=(0, 1, 2), budget=30.0, epochs=2, image_size=32, max_blocks=3,
                       full_lrs=(3e-4, 1e-3, 3e-3)),
    # every image pair of the offline material in one run (3 backbones x 3 datasets), at the smallest size:
    # breadth over tasks rather than sizes (53 min on 2 cores, of which 28 min in the cells themselves)
    "cpu-breadth": BenchConfig("cpu-breadth", tasks=REAL_TASKS[:9],
                               strategies=("linear-probe", "full-ft", "greedy", "tpe", "autosub"), sizes=(50,),
                               seeds=(0, 1, 2), budget=30.0, epochs=2, image_size=32, max_blocks=3,
                               full_lrs=(3e-4, 1e-3, 3e-3)),
    "cpu-text": BenchConfig("cpu-text", tasks=("minilm-finefood", "minilm-rotten", "minilm-tweets"),
                            strategies=("linear-probe", "full-ft", "greedy", "tpe", "autosub", "autosub-cv",
                                        "predictor"),
                            sizes=(50, 200), seeds=(0, 1, 2), budget=12.0, epochs=2, max_length=32, max_blocks=3,
                            full_lrs=(3e-5, 1e-4), options={"endpoint_lrs": (1e-4,)}),
    # claim C2 ("with all the data, 1-3 greedy blocks within 1 point of full FT") on all the training data: UCI
    # digits (1797 images: ~1150 train after the test and val splits, val capped at 250) on the cheapest backbone
    # (MobileNetV2: ~5 s per full-FT epoch at 32 px here); 12 cells in 17.3 min on an idle 2-core CPU
    "cpu-all": BenchConfig("cpu-all", tasks=("mbv2-digits",),
                           strategies=("linear-probe", "full-ft", "greedy", "autosub"), sizes=(None,),
                           seeds=(0, 1, 2), budget=30.0, epochs=2, image_size=32, max_blocks=3,
                           full_lrs=(3e-4, 1e-3, 3e-3)),
    "search": BenchConfig("search", tasks=("lite0-mnist",),
                          strategies=("greedy", "random", "tpe", "tpe-prior", "tpe-predictor"),
                          sizes=(200,), seeds=(0, 1, 2), budget=30.0, epochs=2, image_size=32, max_blocks=3),
    "gpu": BenchConfig("gpu", tasks=REAL_TASKS, strategies=ALL_STRATEGIES, sizes=(50, 200, 1000, None),
                       seeds=(0, 1, 2), budget=30.0, epochs=3, min_steps=16, image_size=224, max_length=64,
                       max_blocks=3, batch_size=64, device="cuda"),
}


def get_config(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise ConfigError(f"Unknown benchmark configuration {name!r}; known: {sorted(CONFIGS)}.")
    return CONFIGS[name]
