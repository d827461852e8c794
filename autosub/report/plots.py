"""Plots of profiles and greedy paths: profile bars with error bars, the pair heatmap, the greedy path.

matplotlib is imported lazily and only through its object API (``Figure`` + the Agg canvas): no pyplot state,
no global backend switch, so plotting works headless and never disturbs a notebook. Every plot is written as
PNG and SVG next to each other; the functions return both paths.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["FORMATS", "plot_greedy", "plot_pairs", "plot_profile"]

if TYPE_CHECKING:  # pragma: no cover
    from ..selection.greedy_selection import GreedyResult
    from ..selection.profiling import Profile

log = logging.getLogger(__name__)

FORMATS = ("png", "svg")


def plot_profile(profile: "Profile", path: str | Path, *, title: str | None = None) -> list[Path]:
    """Mean ± std validation score per block (shaded by fidelity), with the baselines as horizontal lines."""
    fig = _figure(figsize=(max(6.0, 0.45 * len(profile.entries) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    entries = sorted(profile.entries, key=lambda e: e.block)
    top = max((e.epochs for e in entries), default=1)
    x = np.arange(len(entries))
    colors = [(0.18, 0.42, 0.70, 0.35 + 0.65 * e.epochs / top) for e in entries]
    ax.bar(x, [e.mean for e in entries], yerr=[e.std for e in entries], color=colors, capsize=3,
           edgecolor="black", linewidth=0.4)
    styles = {"linear_probe": ("tab:gray", "--"), "full_finetune": ("tab:red", ":")}
    for name, e in profile.baselines.items():
        color, style = styles.get(name, ("tab:green", "-."))
        ax.axhline(e.mean, color=color, linestyle=style, label=f"{name.replace('_', ' ')} {e.mean:.3f}")
        if e.std > 0:
            ax.axhspan(e.mean - e.std, e.mean + e.std, color=color, alpha=0.12)
    names = profile.block_names or [str(e.block) for e in entries]
    ax.set_xticks(x, [f"{e.block}\n{names[e.block]}" if e.block < len(names) else str(e.block) for e in entries],
                  rotation=90 if len(entries) > 8 else 0, fontsize=7)
    if len({e.epochs for e in entries}) > 1:
        for xi, e in zip(x, entries):
            ax.annotate(f"{e.epochs} ep", (xi, e.mean + e.std), ha="center", va="bottom", fontsize=6,
                        xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("validation accuracy")
    ax.set_xlabel("tuned block")
    _ylim(ax, [e.mean - e.std for e in entries] + [e.mean for e in profile.baselines.values()],
          [e.mean + e.std for e in entries] + [e.mean for e in profile.baselines.values()])
    seeds = max((len(e.scores) for e in entries), default=0)
    ax.set_title(title or f"Finetuning profile ({seeds} seed{'s' * (seeds != 1)}, "
                          f"{profile.config.get('fidelity', 'full')} fidelity)")
    if profile.baselines:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_pairs(profile: "Profile", path: str | Path, *, title: str | None = None) -> list[Path]:
    """The pair heatmap: mean score of tuning blocks i and j together (single blocks on the diagonal)."""
    if not profile.pairs:
        raise ValueError("This profile has no pairs; run autosub.profile(..., pairs=True) or pairs=m first.")
    full = profile.pair_matrix()
    keep = sorted({i for p in profile.pairs for i in p.selection})
    m = full[np.ix_(keep, keep)]
    fig = _figure(figsize=(1.0 + 0.55 * len(keep) + 1.5, 1.0 + 0.55 * len(keep)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis")
    fig.colorbar(im, ax=ax, label="validation accuracy")
    ax.set_xticks(range(len(keep)), [str(k) for k in keep])
    ax.set_yticks(range(len(keep)), [str(k) for k in keep])
    if len(keep) <= 16:
        lo, hi = np.nanmin(m), np.nanmax(m)
        for i in range(len(keep)):
            for j in range(len(keep)):
                if not math.isnan(m[i, j]):
                    dark = hi > lo and (m[i, j] - lo) / (hi - lo) < 0.5
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
    ax.set_xlabel("block j")
    ax.set_ylabel("block i")
    ax.set_title(title or "Pair profile (diagonal: single block)")
    return _save(fig, path)


def plot_greedy(result: "GreedyResult", path: str | Path, *, title: str | None = None) -> list[Path]:
    """Every candidate's score at every step (dots), the chosen move (line) and the returned subset (star)."""
    fig = _figure(figsize=(max(5.0, 1.2 * len(result.path) + 2.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    forward = result.config.get("direction", "forward") == "forward"
    xs, ys = [0], [result.start_score]
    for step in result.path:
        x = step.step + 1
        cand = list(step.candidates.items())
        ax.scatter([x] * len(cand), [s for _, s in cand], s=14, color="tab:gray", alpha=0.6, zorder=2)
        for b, s in cand:
            ax.annotate(str(b), (x, s), xytext=(4, 0), textcoords="offset points", fontsize=6, va="center",
                        color="tab:gray")
        ax.scatter([x], [step.score], s=36, color="tab:blue" if step.accepted else "tab:red", zorder=3)
        xs.append(x)
        ys.append(step.score)
    ax.scatter([0], [result.start_score], s=36, color="black", zorder=3)
    ax.plot(xs, ys, color="tab:blue", linewidth=1.2, zorder=1,
            label=f"{'added' if forward else 'removed'} block (red: rejected)")
    k = _selection_step(result)
    if k is not None:
        ax.scatter([k], [result.score], marker="*", s=180, color="gold", edgecolor="black", zorder=4,
                   label=f"returned {list(result.selection)}: {result.score:.3f}")
    eps = result.config.get("epsilon")
    ax.set_xticks(xs, ["start"] + [f"{s.step + 1}\n{'+' if forward else '−'}{s.chosen}" for s in result.path],
                  fontsize=7)
    ax.set_xlabel("step (chosen block)")
    ax.set_ylabel("validation accuracy" + (" (CV)" if result.config.get("cv_folds") else ""))
    allv = [result.start_score] + [s for st in result.path for s in st.candidates.values()]
    _ylim(ax, allv, allv)
    ax.set_title(title or f"Greedy SubTuning ({'forward' if forward else 'backward'}, "
                          f"{result.config.get('stopping', 'strict')}, ε={eps})")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _selection_step(result: "GreedyResult") -> int | None:
    """The x position (0 = start) at which the returned subset was reached."""
    if tuple(result.selection) == tuple(result.path[0].start if result.path else result.selection):
        return 0
    for step in result.path:
        if tuple(step.selection) == tuple(result.selection):
            return step.step + 1
    return None


def _figure(*, figsize: tuple[float, float]) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("Plots need matplotlib: pip install matplotlib.") from None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _ylim(ax: Any, lows: list[float], highs: list[float]) -> None:
    lo = min((v for v in lows if v == v), default=0.0)
    hi = max((v for v in highs if v == v), default=1.0)
    pad = max(0.02, 0.08 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1.0 else hi + pad)


def _save(fig: Any, path: str | Path) -> list[Path]:
    """Write ``path`` (suffix ignored) as .png and .svg; return both paths."""
    stem = Path(path)
    if stem.suffix.lower() in {f".{f}" for f in FORMATS}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in FORMATS:
        target = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(target, format=fmt, dpi=150)
        out.append(target)
    log.info("report: wrote %s", ", ".join(map(str, out)))
    return out
