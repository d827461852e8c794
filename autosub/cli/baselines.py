"""Baselines tuned as fairly as the search: the linear probe and full finetuning, each with its own small search.

* **Linear probe**: the frozen network's pooled features (the input of its head) → scikit-learn's
  ``LogisticRegression`` on standardized features, with ``C`` chosen on the validation split — the classic probe,
  solved to convergence (a head trained for a few epochs of AdamW at the search's default lr is not a fair probe).
* **Full finetuning**: every parameter trained with :func:`autosub.fit` at a few learning rates (same epochs, batch
  size and seed as the search's trials); the one with the best validation accuracy is kept.

Each baseline reads the test split once, after its choice, for the final table only.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.task import Split, Task, take, to_device

__all__ = ["DEFAULT_CS", "DEFAULT_FT_LRS", "Baseline", "full_finetune", "linear_probe", "pooled_features"]

log = logging.getLogger(__name__)

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_FT_LRS = (1e-3, 3e-3, 1e-2)  # the upper half of the search's lr range, where short low-data runs do best


@dataclass
class Baseline:
    """One tuned baseline: what was tried on validation, what was chosen, its test accuracy (read once)."""

    name: str
    how: str
    trainable_params: int
    val: float
    test: float | None
    seconds: float
    tried: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _head_module(work: nn.Module, partition: Any) -> nn.Module:
    if partition.head_module:
        return work.get_submodule(partition.head_module)
    owners = sorted({n.rsplit(".", 1)[0] for n in partition.head if "." in n})
    if len(owners) != 1:
        raise ValueError(f"cannot find the one head module of {type(work).__name__} (head parameters {partition.head})")
    return work.get_submodule(owners[0])


@torch.no_grad()
def pooled_features(work: nn.Module, partition: Any, split: Split, *, device: torch.device,
                    batch_size: int = 128) -> np.ndarray:
    """The input of the model's head (its pooled features) for every example of ``split``, frozen, eval mode."""
    grabbed: list[torch.Tensor] = []
    hook = _head_module(work, partition).register_forward_pre_hook(
        lambda _m, args: grabbed.append(args[0].detach().float().flatten(1).cpu()))
    work.eval()
    try:
        n = len(split)
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(n, start + batch_size))
            work(to_device(take(split.inputs, idx), device))
    finally:
        hook.remove()
    return torch.cat(grabbed).numpy()


def linear_probe(model: nn.Module, task: Task, *, blocks: Any = None, seed: int = 0, device: Any = None,
                 cs: Sequence[float] = DEFAULT_CS, batch_size: int = 128) -> Baseline:
    """Logistic regression on the frozen pooled features, ``C`` chosen on validation; test read once at the end."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ..training.setup import prepare

    t0 = time.perf_counter()
    setup = prepare(model, task, blocks=blocks, seed=seed, device=device)
    feats = {name: pooled_features(setup.work, setup.partition, split, device=setup.device, batch_size=batch_size)
             for name, split in (("train", task.train), ("val", task.val))}
    y_tr, y_va = task.train.targets.cpu().numpy(), task.val.targets.cpu().numpy()
    scaler = StandardScaler().fit(feats["train"])
    x_tr, x_va = scaler.transform(feats["train"]), scaler.transform(feats["val"])
    tried, best = [], None
    for c in cs:
        clf = LogisticRegression(C=float(c), max_iter=3000, random_state=seed).fit(x_tr, y_tr)
        acc = float((clf.predict(x_va) == y_va).mean())
        tried.append({"C": float(c), "val": acc})
        if best is None or acc > best[0]:
            best = (acc, float(c), clf)
    assert best is not None  # cs is never empty (checked by the caller's argument parsing)
    val, c, clf = best
    test = None
    if task.test is not None:  # the one read of test, after C was chosen
        x_te = scaler.transform(pooled_features(setup.work, setup.partition, task.test, device=setup.device,
                                                batch_size=batch_size))
        test = float((clf.predict(x_te) == task.test.targets.cpu().numpy()).mean())
    n_params = int(clf.coef_.size + clf.intercept_.size)
    log.info("linear probe: C=%g val %.4f (tried %s)", c, val, tried)
    how = f"logistic regression on frozen features, C={c:g} (best of {len(cs)} on val)" + _edge_note(c, cs, "--probe-c")
    return Baseline("linear probe", how, n_params, val, test, time.perf_counter() - t0, tried)


def full_finetune(model: nn.Module, task: Task, *, blocks: Any = None, epochs: int = 3,
                  lrs: Sequence[float] = DEFAULT_FT_LRS, batch_size: int = 32, seed: int = 0, device: Any = None,
                  progress: bool = False) -> Baseline:
    """Full finetuning at each of ``lrs`` (validation picks one); test read once, on the chosen model."""
    from tqdm.auto import tqdm

    from ..training.trainer import evaluate, fit
    from ..training.setup import selection_view

    t0 = time.perf_counter()
    view = selection_view(task)
    tried, best = [], None
    for lr in tqdm(list(lrs), desc="full finetuning (lr search)", unit="run", disable=not progress):
        res = fit(model, view, "all", blocks=blocks, epochs=epochs, lr=float(lr), batch_size=batch_size, seed=seed,
                  device=device, keep_model=True)
        tried.append({"lr": float(lr), "val": float(res.score)})
        if best is None or res.score > best.score:
            best = res
        else:
            res.model = None
    assert best is not None
    test = None if task.test is None else float(evaluate(best.model, task.test, device=device))
    lr = float(best.hparams["lr"])
    log.info("full finetuning: lr %g val %.4f (tried %s)", lr, best.score, tried)
    how = f"every parameter, lr {lr:.2g} (best of {len(lrs)} on val), {epochs} epochs"
    return Baseline("full finetuning", how + _edge_note(lr, lrs, "--ft-lrs"), int(best.trainable_params),
                    float(best.score), test, time.perf_counter() - t0, tried)


def _edge_note(best: float, grid: Sequence[float], flag: str) -> str:
    """A warning in the table when the chosen value is the end of a grid of 3+ (the baseline may be under-tuned)."""
    if len(grid) < 3 or min(grid) < best < max(grid):
        return ""
    return f" — at the edge of the grid: widen {flag}"
