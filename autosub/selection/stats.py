"""Per-block network statistics from a few batches of the *train* split, without training.

These are the single-statistic layer selectors of the literature, computed for every block of a model on a task
so that :mod:`autosub.selection.predictor` can learn to combine them (and be compared against each of them):

* structure: relative ``depth``, parameter count ``params``, FLOP share ``flops``, ``reshapes`` = 1 when the block
  changes the channels or the resolution of its input (so it has no identity skip around it), else 0;
* gradients with a fresh head (one forward/backward per batch): Auto-RGN ``rgn`` = mean over the block's weight
  tensors of ‖∇W‖/‖W‖ (Lee et al. 2023; norm weights and biases excluded), Fisher / SPT sensitivity ``fisher`` =
  Σ grad², SNIP saliency ``snip`` = Σ |grad ⊙ W|, each averaged over the batches;
* ``synflow``: log10 Σ |∂R/∂W ⊙ W| of the block, R = sum of the outputs of a float64 copy with |W|, ReLU for
  every activation and an all-ones input at the first block (data-free, Tanaka et al. 2020);
* features captured at every block boundary in the same forward: ``cka`` = 1 − linear CKA of the block's input
  and output (Kornblith et al. 2019), ``logme`` (You et al. 2021) and ``hscore`` (Bao et al. 2019, Ledoit-Wolf
  regularized as in Ibrahim et al. 2022) of the pooled block output, ``lp`` = linear-probe accuracy of the pooled
  block output on a held-out half of the sampled *train* examples;
* ``spectrum``: mean log10 condition number of the block's weight matrices (KappaTune's statistic).

Only ``task.train`` is read (the test split is dropped on entry, validation is never needed).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn

from ..data.task import Inputs, Task, take
from ..errors import ConfigError, DataError, check_positive
from ..model.blocks import Partition
from ..model.splitting import boundary_module
from ..training.setup import prepare

__all__ = ["STATS", "BlockStats", "block_stats", "hscore", "linear_cka", "logme", "logme_evidence",
           "probe_accuracy"]

log = logging.getLogger(__name__)

STATS = ("depth", "params", "flops", "reshapes", "rgn", "fisher", "snip", "synflow", "cka", "logme", "hscore", "lp",
         "spectrum")
_CKA_GRID = 4  # feature maps are average-pooled to at most 4×4 before CKA (bounded memory at any resolution)


@dataclass
class BlockStats:
    """The statistics of every block of one model on one task: ``values[stat][block]``, plus how they were got."""

    block_names: list[str]
    values: dict[str, list[float]]
    task: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    wall_time: float = 0.0

    def __len__(self) -> int:
        return len(self.block_names)

    def matrix(self, names: Sequence[str] = STATS) -> np.ndarray:
        """A blocks × ``names`` float array (columns in the order given)."""
        missing = [n for n in names if n not in self.values]
        if missing:
            raise KeyError(f"statistics {missing} were not computed; available: {sorted(self.values)}")
        return np.array([self.values[n] for n in names], dtype=float).T.reshape(len(self), len(names))

    def to_frame(self) -> Any:
        """One row per block, one column per statistic (a pandas DataFrame indexed by block)."""
        import pandas as pd

        frame = pd.DataFrame({"block": self.block_names, **{k: self.values[k] for k in self.values}})
        frame.index.name = "index"
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {"block_names": list(self.block_names), "values": {k: [float(x) for x in v] for k, v in
                                                                   self.values.items()},
                "task": dict(self.task), "times": dict(self.times), "wall_time": float(self.wall_time)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockStats":
        order = [k for k in STATS if k in d["values"]] + sorted(k for k in d["values"] if k not in STATS)
        return cls(block_names=list(d["block_names"]),
                   values={k: [float(x) for x in d["values"][k]] for k in order},  # JSON sorts keys: STATS order
                   task=dict(d.get("task", {})), times={k: float(v) for k, v in d.get("times", {}).items()},
                   wall_time=float(d.get("wall_time", 0.0)))


def block_stats(model: nn.Module, task: Task, *, partition: Partition | None = None, examples: int = 128,
                grad_examples: int = 32, batch_size: int = 16, seed: int = 0,
                device: str | torch.device | None = None) -> BlockStats:
    """Compute every statistic of :data:`STATS` for each block of ``model`` on ``examples`` training examples.

    The gradient statistics use the first ``grad_examples`` of them (forward/backward in batches of ``batch_size``);
    the feature statistics use all (the rest run forward only). The model is copied and given a fresh ``seed``-ed
    head (the caller's model is untouched); its blocks are discovered on that copy unless ``partition`` is given.
    The same seed on the same CPU gives the same numbers.
    """
    if not isinstance(task, Task):
        raise ConfigError(f"The 'task' parameter of block_stats must be an autosub Task; got {type(task).__name__} "
                          "instead. Build one with autosub.as_task(X, y).")
    for name, value in (("examples", examples), ("grad_examples", grad_examples), ("batch_size", batch_size)):
        check_positive(name, value, "block_stats", integer=True)
        if value < 2:
            raise ConfigError(f"The '{name}' parameter of block_stats must be at least 2; got {value} instead.")
    if grad_examples > examples:
        raise ConfigError(f"The 'grad_examples' parameter of block_stats must be at most examples ({examples}); got "
                          f"{grad_examples} instead.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"The 'seed' parameter of block_stats must be an int; got {seed!r} instead.")
    start = time.perf_counter()
    times: dict[str, float] = {}
    run = prepare(model, task, blocks=partition, seed=int(seed), device=device)  # the one setup path
    view, dev, work, part = run.view, run.device, run.work, run.partition  # the view never holds the test split
    n = len(part)
    gen = torch.Generator().manual_seed(int(seed))
    rows = torch.randperm(len(view.train), generator=gen)[:examples]
    n_grad = min(grad_examples, len(rows))
    ranges = _ranges(0, n_grad, batch_size) + _ranges(n_grad, len(rows), max(64, batch_size))
    n_grad_batches = len(_ranges(0, n_grad, batch_size))
    times["setup"] = time.perf_counter() - start

    t = time.perf_counter()
    values: dict[str, list[float]] = {
        "depth": [i / max(1, n - 1) for i in range(n)],
        "params": [float(b.num_params) for b in part],
        "flops": _flop_shares(work, part, take(view.train.inputs, slice(0, 1)), dev),
        "spectrum": _spectrum(work, part),
    }
    times["static"] = time.perf_counter() - t

    t = time.perf_counter()
    grads, pooled, cka_feats, labels, shapes = _gradient_pass(work, part, view, rows, ranges, dev,
                                                              n_grad_batches)
    values.update(grads)
    values["reshapes"] = [float(_reshapes(shapes[i], shapes[i + 1])) for i in range(n)]
    times["gradients"] = time.perf_counter() - t

    t = time.perf_counter()
    values["synflow"] = _synflow(work, part, take(view.train.inputs, rows[:1]), dev)  # consumes ``work``
    times["synflow"] = time.perf_counter() - t

    t = time.perf_counter()
    y = labels.numpy()
    blas = threadpool_limits(limits=1)  # n × d matrices with n ≈ 128: one BLAS thread is fastest, and fights no one
    values["cka"] = [1.0 - linear_cka(cka_feats[i], cka_feats[i + 1]) for i in range(n)]
    values["logme"] = [logme(pooled[i + 1], y) for i in range(n)]
    values["hscore"] = [hscore(pooled[i + 1], y) for i in range(n)]
    times["transfer"] = time.perf_counter() - t
    t = time.perf_counter()
    values["lp"] = [probe_accuracy(pooled[i + 1], y, seed=int(seed)) for i in range(n)]
    blas.restore_original_limits()
    times["probe"] = time.perf_counter() - t

    for name, vals in values.items():
        bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
        if bad:
            log.warning("block_stats: %s is not finite for blocks %s; set to the median of the others", name, bad)
            good = [v for v in vals if math.isfinite(v)]
            fill = float(np.median(good)) if good else 0.0
            values[name] = [v if math.isfinite(v) else fill for v in vals]
    wall = time.perf_counter() - start
    info = {"n_train": len(view.train), "n_sample": int(len(rows)), "num_classes": int(view.num_classes),
            "kind": view.kind, "n_blocks": n, "model": type(model).__name__, "n_grad": int(n_grad),
            "batch_size": int(batch_size), "seed": int(seed), "device": str(dev)}
    log.info("block_stats: %d blocks, %d examples, %.2fs (%s)", n, len(rows), wall,
             ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))
    return BlockStats(block_names=list(part.names), values={k: values[k] for k in STATS}, task=info, times=times,
                      wall_time=wall)


# ------------------------------------------------------------------------------------------ the passes
def _gradient_pass(work: nn.Module, part: Partition, task: Task, rows: torch.Tensor,
                   ranges: list[tuple[int, int]], dev: torch.device, grad_batches: int):
    """A forward per batch that captures the pooled input of every boundary (0..n, n = the head's input) with
    pre-hooks; the first ``grad_batches`` also run backward through a fresh head for per-block RGN / Fisher / SNIP."""
    n = len(part)
    params = dict(work.named_parameters())
    owned = {name: b.index for b in part for name in b.param_names}
    for name, p in params.items():
        p.requires_grad_(name in owned or name in part.head)
    pooled: dict[int, list[torch.Tensor]] = {b: [] for b in range(n + 1)}
    cka_feats: dict[int, list[torch.Tensor]] = {b: [] for b in range(n + 1)}
    state: dict[str, Any] = {"mask": None, "seen": set(), "batch": 0}
    shapes: dict[int, tuple[int, ...]] = {}

    def make_hook(b: int):
        def hook(_module, args, kwargs):
            if b in state["seen"]:
                return None
            x = _main_tensor(args, kwargs, state["batch"])
            if x is not None:
                state["seen"].add(b)
                shapes.setdefault(b, tuple(x.shape[1:]))
                pooled[b].append(_pool(x.detach(), state["mask"]).float().cpu())
                cka_feats[b].append(_pool(x.detach(), state["mask"], grid=_CKA_GRID).float().cpu())
            return None
        return hook

    handles = [boundary_module(work, part, b).register_forward_pre_hook(make_hook(b), with_kwargs=True)
               for b in range(n + 1)]
    rgn = np.zeros(n)
    fisher = np.zeros(n)
    snip = np.zeros(n)
    targets = []
    loss_fn = nn.CrossEntropyLoss()
    k = 0
    try:
        for j, (lo, hi) in enumerate(ranges):
            idx = rows[lo:hi]
            x = _to_device(take(task.train.inputs, idx), dev)
            y = task.train.targets[idx]
            targets.append(y)
            state.update(mask=x.get("attention_mask") if isinstance(x, Mapping) else None, seen=set(),
                         batch=int(len(idx)))
            if j >= grad_batches:
                with torch.no_grad():
                    work(x)
                continue
            k += 1
            work.zero_grad(set_to_none=True)
            loss = loss_fn(work(x).float(), y.to(dev))
            loss.backward()
            per_block_rgn: list[list[float]] = [[] for _ in range(n)]
            for name, p in params.items():
                b = owned.get(name)
                if b is None or p.grad is None:
                    continue
                g = p.grad.detach().double()
                w = p.detach().double()
                fisher[b] += float((g * g).sum())
                snip[b] += float((g * w).abs().sum())
                if p.ndim > 1:  # weight matrices / kernels: norm weights and biases are excluded (Lee et al.)
                    per_block_rgn[b].append(float(g.norm() / w.norm().clamp_min(1e-12)))
            for b, vals in enumerate(per_block_rgn):
                rgn[b] += float(np.mean(vals)) if vals else 0.0
    finally:
        for h in handles:
            h.remove()
        work.zero_grad(set_to_none=True)
        for p in params.values():
            p.requires_grad_(False)
    missing = [b for b in range(n + 1) if len(pooled[b]) != len(ranges)]
    if missing:
        raise DataError(f"block_stats could not capture the inputs of boundaries {missing} of "
                        f"{type(work).__name__}: their entry modules do not receive a batch-carrying float tensor.")
    grads = {"rgn": list(rgn / k), "fisher": list(fisher / k), "snip": list(snip / k)}
    return (grads, {b: torch.cat(v).double().numpy() for b, v in pooled.items()},
            {b: torch.cat(v).double().numpy() for b, v in cka_feats.items()}, torch.cat(targets), shapes)


_RELU_LIKE = (nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU, nn.Tanh,
              nn.Sigmoid, nn.Hardsigmoid)


def _synflow(net: nn.Module, part: Partition, example: Inputs, dev: torch.device) -> list[float]:
    """Synflow per block: log10 Σ |∂R/∂W ⊙ W| in float64 with |W|, ReLU activations and ones at block 0.

    It turns ``net`` (block_stats' private copy, which needs it no more) into that network instead of copying it.
    """
    net = net.double().eval()
    for name, module in list(net.named_modules()):
        if name and (isinstance(module, _RELU_LIKE) or "gelu" in type(module).__name__.lower()):
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, leaf, nn.ReLU())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    owned = {name: b.index for b in part for name in b.param_names}
    params = dict(net.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in owned)
    batch = int(next(iter(example.values())).shape[0]) if isinstance(example, Mapping) else int(example.shape[0])

    def ones(_module, args, kwargs):
        main = _main_tensor(args, kwargs, batch)
        if main is None:
            return None
        args = tuple(torch.ones_like(v) if v is main else v for v in args)
        kwargs = {k: torch.ones_like(v) if v is main else v for k, v in kwargs.items()}
        return args, kwargs

    handle = boundary_module(net, part, 0).register_forward_pre_hook(ones, with_kwargs=True)
    try:
        x = _to_device(example, dev, dtype=torch.float64)
        net(x).sum().backward()
    finally:
        handle.remove()
    scores = np.zeros(len(part))
    for name, p in params.items():
        b = owned.get(name)
        if b is not None and p.grad is not None:
            scores[b] += float((p.grad * p.detach()).abs().sum())
    logs = [math.log10(s) if s > 0 else -math.inf for s in scores]
    floor = min((v for v in logs if math.isfinite(v)), default=1.0) - 1.0
    return [v if math.isfinite(v) else floor for v in logs]  # no path to the output: below every other block


def _ranges(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) in chunks of ``size``; a trailing 1-example chunk joins the one before (capture needs batches ≥ 2)."""
    out = [(s, min(s + size, hi)) for s in range(lo, hi, size)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < 2:
        out[-2:] = [(out[-2][0], hi)]
    return out


def _flop_shares(work: nn.Module, part: Partition, example: Inputs, dev: torch.device) -> list[float]:
    from ..model.cost import count_flops

    try:
        fp = count_flops(work, part, _to_device(example, dev))
    except Exception as exc:  # informative only: never fail the statistics on it
        log.warning("block_stats: could not count FLOPs (%s: %s); flops is NaN", type(exc).__name__, exc)
        return [float("nan")] * len(part)
    total = fp.total if fp.total > 0 else 1.0
    return [f / total for f in fp.blocks]


def _spectrum(work: nn.Module, part: Partition) -> list[float]:
    """Mean log10 condition number σ_max/σ_min of each weight matrix of the block (kernels flattened to out × rest)."""
    params = dict(work.named_parameters())
    out = []
    for b in part:
        conds = []
        for name in b.param_names:
            p = params[name].detach()
            if p.ndim < 2:
                continue
            s = torch.linalg.svdvals(p.reshape(p.shape[0], -1).float())
            if not float(s.max()) > 0:  # an all-zero matrix has no condition number (left out)
                continue
            conds.append(math.log10(float(s.max()) / max(float(s.min()), 1e-7 * float(s.max()), 1e-30)))
        out.append(float(np.mean(conds)) if conds else float("nan"))
    return out


# ------------------------------------------------------------------------------------------ the scores
def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n examples (n × d1, n × d2): 1 = the same up to rotation/scale.

    CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred features (Kornblith et al. 2019), via n × n Grams.
    """
    x = _as_2d(x, "linear_cka")
    y = _as_2d(y, "linear_cka")
    if len(x) != len(y):
        raise DataError(f"linear_cka needs the same examples in both representations; got {len(x)} and {len(y)} rows.")
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    kx, ky = x @ x.T, y @ y.T
    denom = np.linalg.norm(kx) * np.linalg.norm(ky)
    return float((kx * ky).sum() / denom) if denom > 0 else 0.0


def logme_evidence(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) of Bayesian linear regression y = F m + ε, m ~ N(0, α⁻¹I), ε ~ N(0, β⁻¹I)."""
    f = _as_2d(features, "logme_evidence")
    n, d = f.shape
    u, s = _left_svd(f)
    y = np.asarray(y, dtype=float).reshape(n, 1)
    return float(_evidence(u.T @ y, _perp(y, u), s * s, n, d, np.array([alpha]), np.array([beta]))[0][0])


def _perp(y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """‖y‖² − ‖Uᵀy‖² per column: the part of each label column outside the span of the features."""
    z = u.T @ y
    return np.maximum((y * y).sum(0) - (z * z).sum(0), 0.0)


def _evidence(z: np.ndarray, perp: np.ndarray, sigma: np.ndarray, n: int, d: int, alpha: np.ndarray,
              beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(evidence, γ, mᵀm, ‖y − Fm‖²) per label column at (α, β), in the SVD basis of F.

    ``z`` = Uᵀy (r × columns), ``perp`` = ‖y‖² − ‖z‖², ``sigma`` = the squared singular values (r).
    """
    denom = alpha[None, :] + beta[None, :] * sigma[:, None]
    mm = np.sum((beta[None, :] * np.sqrt(sigma)[:, None] * z / denom) ** 2, axis=0)
    res = np.sum((alpha[None, :] * z / denom) ** 2, axis=0) + perp
    gamma = np.sum(beta[None, :] * sigma[:, None] / denom, axis=0)
    logdet = np.sum(np.log(denom), axis=0) + (d - len(sigma)) * np.log(alpha)
    ev = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * math.log(2 * math.pi) - beta / 2 * res
          - alpha / 2 * mm - logdet / 2)
    return ev, gamma, mm, res


def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 100, tol: float = 1e-5) -> float:
    """LogME (You et al. 2021): the maximized log evidence per example, averaged over one-vs-rest label columns.

    For each class column y, α and β follow MacKay's fixed point α = γ / mᵀm, β = (n − γ) / ‖y − Fm‖² with
    γ = Σ βσᵢ / (α + βσᵢ); the evidence at the fixed point, divided by n, is that column's score. Higher means
    the features explain the labels better. All columns iterate together; α and β are kept in [1e-12, 1e12] so
    degenerate features (all but constant, or exploding) still give a finite score.
    """
    f = _as_2d(features, "logme")
    labels = _labels_for(labels, len(f), "logme")
    n, d = f.shape
    u, s = _left_svd(f)
    u, sigma = u, s ** 2
    y = (labels[:, None] == np.unique(labels)[None, :]).astype(float)  # one-hot, n × classes
    z, perp = u.T @ y, _perp(y, u)
    alpha, beta = np.ones(y.shape[1]), np.ones(y.shape[1])
    for _ in range(max_iter):
        _, gamma, mm, res = _evidence(z, perp, sigma, n, d, alpha, beta)
        new_alpha = np.clip(gamma / np.maximum(mm, 1e-300), _LO, _HI)
        new_beta = np.clip(np.maximum(n - gamma, 1e-12) / np.maximum(res, 1e-300), _LO, _HI)
        done = np.all(np.abs(new_alpha - alpha) <= tol * alpha) and np.all(np.abs(new_beta - beta) <= tol * beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return float(np.mean(_evidence(z, perp, sigma, n, d, alpha, beta)[0] / n))


_LO, _HI = 1e-12, 1e12


def hscore(features: np.ndarray, labels: np.ndarray, *, shrinkage: str | None = "ledoit-wolf") -> float:
    """H-score (Bao et al. 2019): tr(cov(f)⁻¹ cov(E[f | y])), how well class means separate relative to the spread.

    ``shrinkage="ledoit-wolf"`` uses the Ledoit-Wolf shrunk covariance (Ibrahim et al. 2022), which keeps the score
    informative when the feature dimension approaches the number of examples; ``None`` uses the pseudo-inverse of
    the plain (biased) covariance, as in the paper. Computed in the span of the centred features (≤ n dimensions):
    the between-class covariance lives there, so the trace is exact and costs O(n²d), not O(d³).
    """
    f = _as_2d(features, "hscore")
    labels = _labels_for(labels, len(f), "hscore")
    if shrinkage not in ("ledoit-wolf", None):
        raise ConfigError(f"The 'shrinkage' parameter of hscore must be 'ledoit-wolf' or None; got {shrinkage!r}.")
    n, d = f.shape
    f = f - f.mean(0, keepdims=True)
    u, s = _left_svd(f)
    g = u * s  # the features in the basis of their principal directions
    var = s**2 / n  # cov(f) is diagonal there
    means = np.zeros_like(g)
    for c in np.unique(labels):
        members = labels == c
        means[members] = g[members].mean(0)
    between = (means * means).sum(0) / n  # the diagonal of cov(E[f | y]) in that basis
    if shrinkage is None:
        return float(np.sum(between / var))
    delta, mu = _ledoit_wolf(f)
    return float(np.sum(between / ((1 - delta) * var + delta * mu)))


def _left_svd(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and the nonzero singular values of ``f`` (n × d); via the n × n Gram when n < d.

    The Gram route costs a fraction of a full SVD for the usual n ≈ 128 ≪ d; singular values under 1e-7 of the
    largest (below what the Gram resolves) are dropped, as the pseudo-inverse would.
    """
    if f.shape[0] < f.shape[1]:
        w, u = np.linalg.eigh(f @ f.T)
        s = np.sqrt(np.clip(w, 0.0, None))
        tol = 1e-7
    else:
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        tol = 1e-10
    keep = s > tol * max(float(s.max()), 1e-300)
    return u[:, keep], s[keep]


def _ledoit_wolf(f: np.ndarray) -> tuple[float, float]:
    """Ledoit-Wolf (2004) shrinkage δ and target scale μ = tr(S)/d of centred ``f``, from its n × n Gram matrix.

    The shrunk covariance is (1 − δ) S + δ μ I — the same as scikit-learn's ``ledoit_wolf(assume_centered=True)``.
    """
    n, d = f.shape
    gram = f @ f.T
    s2 = float((gram * gram).sum()) / n**2  # ‖S‖²_F
    mu = float(np.trace(gram)) / (n * d)
    delta = (s2 - mu * mu * d) / d
    beta = (float((np.diag(gram) ** 2).sum()) / n - s2) / (d * n)
    beta = min(beta, delta)
    return (0.0 if beta <= 0 or delta <= 0 else beta / delta), mu


def probe_accuracy(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, holdout: float = 0.5) -> float:
    """Accuracy of a linear probe fitted on part of (features, labels) and scored on the held-out rest.

    The probe is scikit-learn's ridge classifier on features standardized with the fit part's mean and spread
    (closed form, so a probe per block costs far less than a training step). The held-out part takes the same share
    of every class (at least one example of each class stays on either side where the class has two).
    """
    from sklearn.linear_model import RidgeClassifier

    f = _as_2d(features, "probe_accuracy")
    labels = _labels_for(labels, len(f), "probe_accuracy")
    if not (isinstance(holdout, float) and 0 < holdout < 1):
        raise ConfigError(f"The 'holdout' parameter of probe_accuracy must be a float in (0, 1); got {holdout!r}.")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(holdout * len(members)))
        k = min(max(k, 1), len(members) - 1) if len(members) >= 2 else 0
        held[members[:k]] = True
    if held.all() or not held.any() or len(np.unique(labels[~held])) < 2:
        return float("nan")
    mean, sd = f[~held].mean(0), f[~held].std(0)
    z = (f - mean) / np.where(sd > 0, sd, 1.0)
    probe = RidgeClassifier(alpha=float(f.shape[1])).fit(z[~held], labels[~held])
    return float(probe.score(z[held], labels[held]))


def _reshapes(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
    """Whether a block maps a tensor of shape ``before`` to a different number of features or a new resolution.

    Feature maps are (C, H, W), token states (L, D) and pooled vectors (D,): features are C or D (the pooling in front
    of a head is not the block's doing), and the resolution is compared only between two feature maps.
    """
    def features(shape: tuple[int, ...]) -> int:
        return shape[0] if len(shape) == 3 else shape[-1]

    if features(before) != features(after):
        return True
    return len(before) == 3 and len(after) == 3 and before[1:] != after[1:]


def _main_tensor(args: Iterable[Any], kwargs: Mapping[str, Any], batch: int) -> torch.Tensor | None:
    """The largest floating tensor argument that carries the batch dimension (hidden states, not masks)."""
    best = None
    for v in [*args, *kwargs.values()]:
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2 and v.shape[0] == batch:
            if best is None or v.numel() > best.numel():
                best = v
    return best


def _pool(x: torch.Tensor, mask: torch.Tensor | None, *, grid: int | None = None) -> torch.Tensor:
    """Per-example features: a feature map is average-pooled (globally, or to ``grid``²), tokens are mask-averaged."""
    if x.dim() == 4:
        if grid is None:
            return x.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(x, (min(grid, x.shape[2]), min(grid, x.shape[3]))).flatten(1)
    if x.dim() == 3:
        if mask is not None and mask.dim() == 2 and mask.shape[:2] == x.shape[:2]:
            m = mask.to(x.device, x.dtype).unsqueeze(-1)
            return (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return x.mean(dim=1)
    return x.flatten(1)


def _as_2d(x: Any, owner: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or len(a) < 2 or not np.isfinite(a).all():
        raise DataError(f"{owner} needs a finite n × d feature matrix with n >= 2; got shape {a.shape}.")
    return a


def _labels_for(labels: Any, n: int, owner: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{owner} needs one label per example ({n}); got shape {y.shape}.")
    if len(np.unique(y)) < 2:
        raise DataError(f"{owner} needs at least 2 classes among the labels; got {np.unique(y).tolist()}.")
    return y


def _to_device(x: Inputs, dev: torch.device, *, dtype: torch.dtype | None = None) -> Inputs:
    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(dev)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if isinstance(x, Mapping):
        return {k: move(v) for k, v in x.items()}
    return move(x)
