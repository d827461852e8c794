"""The benchmark report: a Markdown table (mean ± 95% CI per task and strategy, mean rank, wins/ties/losses of
autosub's default), the effect of cross-validation, the paper's claims C1–C3 as measured, plots, ``summary.json``.

Everything here reads finished cells (dicts, see :mod:`autosub.bench.runner`); nothing trains.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .._io import atomic_write, write_json
from .configs import BenchConfig

__all__ = ["DEFAULT", "TIE", "claims", "cv_effect", "mean_ci", "mean_ranks", "plot_all", "summarize",
           "win_tie_loss", "write_report"]

DEFAULT = "autosub"  # the strategy the report compares against every other one
TIE = 0.001  # two test accuracies within 0.1 point are a tie (1 example in 1,000)
NEAR_BEST = 0.005  # the goal: within 0.5 point of the best strategy
C2_MARGIN = 0.01  # claim C2: within 1 point of full finetuning


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for one value: no interval)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


def _valid(cells: Iterable[dict]) -> list[dict]:
    return [c for c in cells if c.get("status") == "ok" and "test" in c]


def _size_label(size: Any) -> str:
    return "all" if size is None else str(size)


def _groups(cells: Iterable[dict]) -> dict[tuple[str, Any], dict[str, list[dict]]]:
    """(task, size) → strategy → cells."""
    out: dict[tuple[str, Any], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in _valid(cells):
        k = c["key"]
        out[(k["task"], k["size"])][k["strategy"]].append(c)
    return out


def mean_ranks(cells: Iterable[dict]) -> tuple[dict[str, float], dict[str, int]]:
    """Mean over (task, size) of each strategy's rank by mean test accuracy (1 = best, ties averaged)."""
    from scipy.stats import rankdata

    ranks: dict[str, list[float]] = defaultdict(list)
    for _, by in _groups(cells).items():
        names = sorted(by)
        means = [np.mean([c["test"] for c in by[n]]) for n in names]
        for n, r in zip(names, rankdata([-m for m in means], method="average")):
            ranks[n].append(float(r))
    return {n: float(np.mean(r)) for n, r in ranks.items()}, {n: len(r) for n, r in ranks.items()}


def win_tie_loss(cells: Iterable[dict], default: str = DEFAULT, tie: float = TIE) -> dict[str, dict[str, int]]:
    """Per (task, size, seed): the default's test accuracy against each other strategy's (ties within ``tie``)."""
    by: dict[tuple, dict[str, float]] = defaultdict(dict)
    for c in _valid(cells):
        k = c["key"]
        by[(k["task"], k["size"], k["seed"])][k["strategy"]] = c["test"]
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"wins": 0, "ties": 0, "losses": 0})
    for scores in by.values():
        if default not in scores:
            continue
        for name, t in scores.items():
            if name == default:
                continue
            d = scores[default] - t
            out[name]["ties" if abs(d) <= tie else ("wins" if d > 0 else "losses")] += 1
    return dict(out)


def near_best_share(cells: Iterable[dict], default: str = DEFAULT, margin: float = NEAR_BEST) -> dict[str, Any]:
    """On how many (task, size) cells the default's mean test accuracy is within ``margin`` of the best strategy's."""
    hits, total = 0, 0
    for _, by in _groups(cells).items():
        if default not in by:
            continue
        means = {n: float(np.mean([c["test"] for c in cs])) for n, cs in by.items()}
        total += 1
        hits += means[default] >= max(means.values()) - margin
    return {"within": hits, "cells": total, "share": hits / total if total else None, "margin": margin}


def cv_effect(cells: Iterable[dict], plain: str = DEFAULT, cv: str = f"{DEFAULT}-cv") -> dict[str, Any] | None:
    """How often cross-validated scoring changes the default's winner, and what it does to test accuracy."""
    by: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for c in _valid(cells):
        k = c["key"]
        if k["strategy"] in (plain, cv):
            by[(k["task"], k["size"], k["seed"])][k["strategy"]] = c
    pairs = [(v[plain], v[cv]) for v in by.values() if plain in v and cv in v]
    if not pairs:
        return None
    changed = [a["selection"] != b["selection"] for a, b in pairs]
    deltas = [b["test"] - a["test"] for a, b in pairs]
    ch = [d for d, c in zip(deltas, changed) if c]
    per_size: dict[str, list[float]] = defaultdict(list)
    for (a, b) in pairs:
        per_size[_size_label(a["key"]["size"])].append(b["test"] - a["test"])
    return {"pairs": len(pairs), "winner_changed": int(sum(changed)), "share_changed": float(np.mean(changed)),
            "mean_test_delta": float(np.mean(deltas)), "mean_test_delta_when_changed": float(np.mean(ch)) if ch else None,
            "cv_better": int(sum(d > TIE for d in deltas)), "cv_worse": int(sum(d < -TIE for d in deltas)),
            "mean_test_delta_by_size": {k: float(np.mean(v)) for k, v in per_size.items()},
            "compute_plain": float(np.mean([a["compute"] for a, _ in pairs])),
            "compute_cv": float(np.mean([b["compute"] for _, b in pairs]))}


def _mean_test(by: dict[str, list[dict]], name: str) -> float | None:
    return float(np.mean([c["test"] for c in by[name]])) if by.get(name) else None


def claims(cells: Iterable[dict], config: BenchConfig) -> dict[str, dict[str, Any]]:
    """The paper's claims, as measured: each {holds: bool | None (not measurable here), numbers, note}."""
    cells = list(cells)
    groups = _groups(cells)
    sized = [s for s in config.sizes if s is not None]
    small = min(sized) if sized else None
    large = None if None in config.sizes else (max(sized) if sized else None)

    # C1: with little data, the best SubTuning ≥ full finetuning and ≥ the linear probe
    c1: dict[str, Any] = {}
    for (task, size), by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if size != small:
            continue
        subs = {n: _mean_test(by, n) for n, cs in by.items() if cs and cs[0].get("family") == "subtuning"
                and not any("endpoints" in (c.get("extra") or {}) for c in cs)}  # pure SubTuning: not the default,
        # which may return an endpoint (its own numbers are autosub_test / autosub_holds)
        auto = _mean_test(by, DEFAULT)
        full, probe = _mean_test(by, "full-ft"), _mean_test(by, "linear-probe")
        if not subs or full is None or probe is None:
            continue
        best = max(subs, key=lambda n: subs[n])
        c1[task] = {"best_subtuning": best, "best_subtuning_test": subs[best], "full_ft_test": full,
                    "linear_probe_test": probe, "holds": subs[best] >= full and subs[best] >= probe,
                    "autosub_test": auto, "autosub_holds": None if auto is None else (auto >= full and auto >= probe)}
    out = {"C1": {"claim": "with little data the best SubTuning >= full finetuning and >= linear probing",
                  "size": small, "holds": all(v["holds"] for v in c1.values()) if c1 else None, "numbers": c1,
                  "note": "best SubTuning = the pure SubTuning strategy (not the default, which may return an endpoint) "
                          "with the highest mean test accuracy (an oracle over strategies, as the paper's best "
                          "subset); autosub_holds checks the default alone."}}

    # C2: with all (the most) data, 1–3 greedily chosen blocks come within 1 point of full finetuning
    c2: dict[str, Any] = {}
    for (task, size), by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if size != large or not by.get("greedy") or not by.get("full-ft"):
            continue
        g, f = _mean_test(by, "greedy"), _mean_test(by, "full-ft")
        nb = [c["n_blocks"] for c in by["greedy"] if c.get("n_blocks") is not None]
        c2[task] = {"greedy_test": g, "full_ft_test": f, "gap": f - g, "greedy_blocks": nb,
                    "holds": (f - g) <= C2_MARGIN and all(1 <= b <= 3 for b in nb)}
    out["C2"] = {"claim": "with all the data, 1-3 greedily chosen blocks come within 1 point of full finetuning",
                 "size": large if large is not None else "all",
                 "holds": all(v["holds"] for v in c2.values()) if c2 else None, "numbers": c2,
                 "note": ("measured at the largest size of this configuration, not 'all'" if None not in config.sizes
                          else "measured on all the training data")}

    # C3: the best blocks differ between tasks
    c3: dict[str, Any] = {}
    order = ("greedy", DEFAULT, "tpe-prior", "profile-topk", "tpe")
    for task in config.tasks:
        chosen = [c for c in _valid(cells) if c["key"]["task"] == task and isinstance(c.get("selection"), list)]
        for name in order:
            mine = [c for c in chosen if c["key"]["strategy"] == name and c["key"]["size"] == (large or small)]
            if mine:
                sels = Counter(tuple(c["selection"]) for c in mine)
                top = _top_profile_block(chosen)
                c3[task] = {"strategy": name, "modal_selection": list(sels.most_common(1)[0][0]),
                            "selections": {",".join(map(str, k)): v for k, v in sels.items()},
                            "top_profile_block": top}
                break
    distinct = {tuple(v["modal_selection"]) for v in c3.values()}
    out["C3"] = {"claim": "the best blocks differ between tasks", "holds": (len(distinct) > 1) if len(c3) > 1 else None,
                 "numbers": c3, "distinct_modal_selections": len(distinct),
                 "note": "modal selection over seeds of the first available of greedy / autosub / tpe-prior / "
                         "profile-topk, at the largest size; block indices are per backbone (tasks on different "
                         "backbones differ trivially)."}
    return out


def _top_profile_block(cells: list[dict]) -> int | None:
    scores = _profile_means(cells)
    return int(np.nanargmax(scores)) if scores is not None and np.isfinite(scores).any() else None


def _profile_means(cells: list[dict]) -> np.ndarray | None:
    rows = [c["extra"]["prior_scores"] for c in cells if (c.get("extra") or {}).get("prior_scores")]
    if not rows:
        return None
    n = max(len(r) for r in rows)
    arr = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        arr[i, : len(r)] = r
    with np.errstate(all="ignore"):
        return np.nanmean(arr, axis=0)


def summarize(cells: list[dict], config: BenchConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """The summary.json content."""
    ranks, n_ranked = mean_ranks(cells)
    valid = _valid(cells)
    flagged = [c for c in cells if c.get("status") != "ok"]
    table: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (task, size), by in _groups(cells).items():
        for name, cs in by.items():
            m, h = mean_ci([c["test"] for c in cs])
            table[f"{task}@{_size_label(size)}"][name] = {
                "test_mean": m, "test_ci95": h, "n": len(cs), "val_mean": float(np.mean([c["val"] for c in cs])),
                "compute_mean": float(np.mean([c["compute"] for c in cs])),
                "wall_s_mean": float(np.mean([c["wall_s"] for c in cs])),
                "trainable_params_mean": float(np.mean([c["trainable_params"] for c in cs])),
                "added_cost_mean": _nanmean([c.get("added_cost") for c in cs])}
    return {"config": config.name, "mean_rank": ranks, "ranked_cells": n_ranked,
            "tasks": sorted({c["key"]["task"] for c in valid}), "sizes": sorted({_size_label(c["key"]["size"])
                                                                                for c in valid}),
            "seeds": sorted({c["key"]["seed"] for c in valid}), "strategies": sorted({c["key"]["strategy"]
                                                                                     for c in valid}),
            "cells": len(cells), "valid_cells": len(valid),
            "flagged": [{"key": c["key"], "status": c["status"], "reason": c.get("reason")} for c in flagged],
            "table": dict(table), "win_tie_loss": win_tie_loss(cells), "near_best": near_best_share(cells),
            "cv_effect": cv_effect(cells), "claims": claims(cells, config),
            "unavailable": meta.get("unavailable", {}), "machine": meta.get("machine"),
            "command": meta.get("command"), "wall_s": meta.get("wall_s"),
            # independent of how many invocations (resumes) built the cells: a rerun that only rewrites the report
            # has a wall of ~0 s
            "cells_wall_s": round(sum(float(c.get("wall_s") or 0.0) for c in cells), 1),
            "cells_run": meta.get("cells_run"), "cells_reused": meta.get("cells_reused"),
            "loadavg_start": meta.get("loadavg_start"),
            "loadavg_end": meta.get("loadavg_end"), "budget": config.budget, "tolerance": config.tolerance,
            "autosub_version": meta.get("autosub_version")}


def _nanmean(xs: Iterable[Any]) -> float | None:
    v = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return float(np.mean(v)) if v else None


def _fmt(m: float | None, h: float | None = None) -> str:
    if m is None or not math.isfinite(m):
        return "—"
    s = f"{100 * m:.1f}"
    return s + (f" ± {100 * h:.1f}" if h is not None and math.isfinite(h) else "")


def markdown(summary: dict[str, Any], config: BenchConfig) -> str:
    """The report as Markdown."""
    cols = list(summary["table"])
    strategies = [s for s in config.strategies if s in summary["strategies"]]
    ranks = summary["mean_rank"]
    lines = [f"# autosub benchmark `{config.name}`", "",
             f"Command: `{summary['command']}`  ", f"Machine: {_machine_line(summary['machine'])}  ",
             f"Load average at start / end: {summary['loadavg_start']} / {summary['loadavg_end']}; wall "
             f"{summary['wall_s']} s for this invocation ({summary['cells_run']} cells run, "
             f"{summary['cells_reused']} reused); the cells' own wall times sum to {summary['cells_wall_s']} s  ",
             f"Budget: {config.budget:g} full-finetune-epoch equivalents per strategy and cell (over "
             f"+{100 * config.tolerance:.0f}% is flagged); {config.epochs} epochs per fit"
             + (f" (raised to reach {config.min_steps} steps per fit on small sets, the budget scaled alike)"
                if config.min_steps else "") + "; "
             f"{config.image_size} px / seq {config.max_length}; seeds {summary['seeds']}.", "",
             "## Test accuracy (%, mean ± 95% CI over seeds) and mean rank", "",
             "| strategy | " + " | ".join(cols) + " | mean rank |", "|---" * (len(cols) + 2) + "|"]
    for s in strategies:
        row = [_fmt(summary["table"][c].get(s, {}).get("test_mean"), summary["table"][c].get(s, {}).get("test_ci95"))
               for c in cols]
        lines.append(f"| {s} | " + " | ".join(row) + f" | {ranks.get(s, float('nan')):.2f} |")
    lines += ["", "## Compute spent (full-FT epochs, mean) / trainable parameters (mean)", "",
              "| strategy | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for s in strategies:
        row = []
        for c in cols:
            e = summary["table"][c].get(s)
            row.append("—" if e is None else f"{e['compute_mean']:.1f} / {e['trainable_params_mean'] / 1e3:.0f}k")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    wtl = summary["win_tie_loss"]
    if wtl:
        lines += ["", f"## `{DEFAULT}` against each strategy (per task × size × seed; tie = within {100 * TIE:.1f} pt)",
                  "", "| strategy | wins | ties | losses |", "|---|---|---|---|"]
        lines += [f"| {s} | {v['wins']} | {v['ties']} | {v['losses']} |" for s, v in sorted(wtl.items())]
    nb = summary["near_best"]
    if nb["cells"]:
        lines += ["", f"`{DEFAULT}` is within {100 * nb['margin']:.1f} pt of the best strategy on {nb['within']} of "
                      f"{nb['cells']} task × size cells (goal: ≥ 80%)."]
    cv = summary["cv_effect"]
    if cv:
        lines += ["", "## Cross-validated scoring (`autosub-cv` vs `autosub`)", "",
                  f"The winner changed in {cv['winner_changed']} of {cv['pairs']} runs; test accuracy "
                  f"{100 * cv['mean_test_delta']:+.1f} pt on average ({cv['cv_better']} better, {cv['cv_worse']} "
                  f"worse); by size {({k: round(100 * v, 1) for k, v in cv['mean_test_delta_by_size'].items()})}; "
                  f"compute {cv['compute_plain']:.1f} vs {cv['compute_cv']:.1f}."]
    lines += ["", "## The paper's claims on these tasks", ""]
    for cid, c in summary["claims"].items():
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[c["holds"]]
        lines.append(f"- **{cid}** ({c['claim']}): **{verdict}**. {c.get('note', '')}")
        for task, v in c["numbers"].items():
            nums = ", ".join(f"{k}={_num(x)}" for k, x in v.items())
            lines.append(f"  - {task}: {nums}")
    if summary["unavailable"]:
        lines += ["", "## Unavailable here (skipped)", ""]
        lines += [f"- `{k}`: {v}" for k, v in summary["unavailable"].items()]
    if summary["flagged"]:
        lines += ["", "## Cells left out of the tables", ""]
        lines += [f"- {f['key']}: {f['status']} — {f['reason']}" for f in summary["flagged"]]
    lines += ["", "Plots: `acc_vs_size.png`, `acc_vs_compute.png`, `profiles.png`. Cells: `cells/*.json`.", ""]
    return "\n".join(lines)


def _num(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}" if math.isfinite(x) else "nan"
    return str(x)


def _machine_line(m: dict[str, Any] | None) -> str:
    if not m:
        return "unknown"
    return (f"{m.get('cpu')} ({m.get('cores')} cores, torch {m.get('torch')}, {m.get('torch_threads')} threads"
            f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}), {m.get('platform')}")


# ---------------------------------------------------------------------------------------------------- plots
def plot_all(cells: list[dict], config: BenchConfig, out: Path) -> list[Path]:
    """acc_vs_size.png, acc_vs_compute.png, profiles.png (matplotlib's object API; no global state)."""
    from matplotlib.figure import Figure

    valid = _valid(cells)
    tasks = [t for t in config.tasks if any(c["key"]["task"] == t for c in valid)]
    if not tasks:
        return []
    colors = {s: f"C{i % 10}" for i, s in enumerate(config.strategies)}
    paths = []

    def grid(title: str) -> tuple[Any, list[Any]]:
        fig = Figure(figsize=(max(8.0, 4.2 * len(tasks)), 3.8), layout="constrained")
        axes = fig.subplots(1, len(tasks), squeeze=False)[0]
        fig.suptitle(title)
        return fig, list(axes)

    fig, axes = grid(f"test accuracy vs training-set size (mean ± 95% CI), {config.name}")
    for ax, task in zip(axes, tasks):
        for s in config.strategies:
            pts = []
            for size in config.sizes:
                cs = [c for c in valid if c["key"]["task"] == task and c["key"]["strategy"] == s
                      and c["key"]["size"] == size]
                if cs:
                    m, h = mean_ci([c["test"] for c in cs])
                    pts.append((float(np.mean([c["n_train"] for c in cs])), m, 0.0 if math.isnan(h) else h))
            if pts:
                x, y, e = zip(*pts)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, color=colors[s], label=s)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("training examples")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    paths.append(_save(fig, out / "acc_vs_size.png"))

    fig, axes = grid(f"test accuracy vs compute spent (full-FT epochs), {config.name}")
    for ax, task in zip(axes, tasks):
        for s in config.strategies:
            cs = [c for c in valid if c["key"]["task"] == task and c["key"]["strategy"] == s]
            if cs:
                ax.scatter([c["compute"] for c in cs], [c["test"] for c in cs], color=colors[s], label=s, s=18,
                           alpha=0.8)
        for b in sorted({c.get("budget", config.budget) for c in valid if c["key"]["task"] == task}):
            ax.axvline(b, color="gray", ls="--", lw=1)  # the allowance (one per size when min_steps scales it)
        ax.set_title(task)
        ax.set_xlabel("compute (full-FT epoch equivalents)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    paths.append(_save(fig, out / "acc_vs_compute.png"))

    fig, axes = grid("per-task profiles: profile score per block (bars), share of runs selecting it (dots)")
    for ax, task in zip(axes, tasks):
        mine = [c for c in valid if c["key"]["task"] == task]
        prof = _profile_means(mine)
        picks = Counter(b for c in mine if isinstance(c.get("selection"), list) for b in c["selection"])
        runs = sum(1 for c in mine if isinstance(c.get("selection"), list)) or 1
        n = max(len(prof) if prof is not None else 0, (max(picks) + 1) if picks else 0)
        if prof is not None:
            ax.bar(range(len(prof)), prof, color="tab:blue", alpha=0.6, label="profile score (val)")
        ax2 = ax.twinx()
        ax2.plot(range(n), [picks.get(b, 0) / runs for b in range(n)], "o", color="tab:red", label="selected share")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("share of runs selecting the block")
        ax.set_title(task)
        ax.set_xlabel("block")
        ax.set_ylabel("profile val accuracy")
    paths.append(_save(fig, out / "profiles.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_report(out: str | Path, config: BenchConfig, cells: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """summary.json, report.md and the plots under ``out``; returns the summary."""
    out = Path(out)
    summary = summarize(cells, config, meta)
    summary["plots"] = [p.name for p in plot_all(cells, config, out)]
    summary["meta"] = {k: v for k, v in meta.items() if k not in ("machine",)}
    write_json(summary, out / "summary.json")
    atomic_write(out / "report.md", markdown(summary, config))
    return summary
