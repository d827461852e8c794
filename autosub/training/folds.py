"""k-fold cross-validation over train + val, sharing one prefix cache across the folds.

A frozen prefix's output for an example does not depend on the fold, so one cache is filled over train+val merged
(split ``"all"``) and each fold reads its rows through a :class:`CacheView`: k folds cost one prefix pass, not k.
Greedy (``cv_folds=``) and the search (``TrainingConfig(cv_folds=…)``) both use it; the test split never enters.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.task import Split, Task, concat_splits
from ..errors import DataError
from .cache import ActivationCache

__all__ = ["CacheView", "cv_folds_of", "holdout_rows"]


def cv_folds_of(task: Task, folds: int, *, seed: int) -> tuple[Split, list[tuple[Task, dict[str, torch.Tensor]]]]:
    """Stratified k-fold tasks over train+val merged (never test), each with its rows in the merged split."""
    from sklearn.model_selection import StratifiedKFold

    merged = concat_splits(task.train, task.val, name="all")
    y = merged.targets.numpy()
    counts = np.bincount(y, minlength=task.num_classes)
    if counts[counts > 0].min() < folds:
        raise DataError(f"cv_folds={folds} needs at least {folds} examples of every class in train+val; the rarest "
                        f"class has {int(counts[counts > 0].min())}. Use fewer folds or collect more examples.")
    out = []
    for tr, va in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        rows = {"train": torch.as_tensor(np.sort(tr)), "val": torch.as_tensor(np.sort(va))}
        fold = Task(train=merged.subset(rows["train"], name="train"), val=merged.subset(rows["val"], name="val"),
                    num_classes=task.num_classes, test=None, kind=task.kind, train_transform=task.train_transform,
                    meta=dict(task.meta))
        out.append((fold, rows))
    return merged, out


class CacheView(ActivationCache):
    """A fold's view of a cache over train+val merged (split ``"all"``): its "train"/"val" rows are rows of it.

    It holds no storage and skips ``ActivationCache.__init__``: the split-dependent methods re-index ``base``;
    everything else (verdicts, stand-in, views, budget) is read from ``base``.
    """

    def __init__(self, base: ActivationCache, rows: dict[str, torch.Tensor], *, augmented: bool) -> None:
        self.base = base
        self._map = {k: v for k, v in rows.items() if not (augmented and k == "train")}

    def __getattr__(self, name: str):
        if name in ("base", "_map"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def has(self, split: str, boundary: int) -> bool:
        return split in self._map and self.base.has("all", boundary)

    def rows(self, split: str) -> int:
        return len(self._map[split])

    def ensure(self, boundaries, splits=None) -> list[int]:
        names = list(splits or self._map)
        got = self.base.ensure(boundaries, ["all"])
        return [b for b in got if all(n in self._map for n in names)]

    def batch(self, split: str, boundary: int, index: torch.Tensor):
        return self.base.batch("all", boundary, self._map[split][index])

    def run(self, model: nn.Module, split: str, boundary: int, rows: torch.Tensor):
        return self.base.run(model, "all", boundary, self._map[split][rows])


def holdout_rows(task: Task) -> dict[str, torch.Tensor]:
    """The rows of ``task``'s own train/val split inside the merged split (train first, then val)."""
    n_train, n_val = len(task.train), len(task.val)
    return {"train": torch.arange(n_train), "val": n_train + torch.arange(n_val)}
