"""``autosub report RUN_DIR``: one self-contained HTML page from whatever a run directory holds.

Sections appear when their evidence exists (the layout is in :mod:`autosub.cli.rundir`): the final table (linear
probe / full finetuning / the chosen selection — the only place test accuracy appears), the chosen blocks on the
network's block diagram, the finetuning profile (bars ± std with the baselines) or the search's one-epoch prior, the
pair heatmap, the greedy path, the search history (score vs trial and vs compute, from ``trials.csv``), the Pareto
front of score vs added inference cost, and the config and command that produced the run.

Figures are inline SVG (:mod:`autosub.report.svg`); the page has no scripts and references nothing outside itself.
"""
from __future__ import annotations

import html
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

from .._io import atomic_write
from .._version import __version__
from . import svg

__all__ = ["build_report", "render_report"]

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#222}
main{max-width:1080px;margin:0 auto;padding:24px}
h1{font-size:1.6rem;margin:0 0 4px} h2{font-size:1.15rem;margin:0 0 10px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:16px 20px;margin:16px 0}
figure{margin:8px 0} figcaption{color:#555;font-size:.88rem;margin-top:4px}
table{border-collapse:collapse;font-size:.92rem} td,th{padding:5px 12px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left} tr.chosen td{font-weight:600;background:#fff5ea}
pre{background:#f3f4f6;padding:10px;border-radius:6px;overflow-x:auto;font-size:.82rem;white-space:pre-wrap;
word-break:break-word}
.meta{color:#555;font-size:.9rem} .note{color:#666;font-size:.85rem}
.row{display:flex;flex-wrap:wrap;gap:12px} .row figure{flex:1 1 480px}
"""


def build_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``output``) from the run directory; return its path."""
    from .rundir import REPORT, read_run

    run = read_run(run_dir)
    target = Path(output) if output is not None else run.path / REPORT
    atomic_write(target, render_report(run))
    log.info("report: wrote %s", target)
    return target


def render_report(run: Any) -> str:
    """The HTML text of the report of a :class:`~autosub.cli.rundir.Run`."""
    sections = [s for s in (_final_table(run), _diagram(run), _profile(run), _pairs(run), _greedy(run),
                            _history(run), _pareto(run), _provenance(run)) if s]
    cfg = run.config
    demo = run.kind == "demo"
    model = cfg.get("model") or ("efficientnet_lite0" if demo else None) or (run.blocks or {}).get("model") or \
        _result_cfg(run).get("model", "?")
    data = cfg.get("data") or ("mnist" if demo else "?")
    head = (f"<h1>autosub {_e(run.kind)} report</h1><p class=meta>model <b>{_e(model)}</b> · data <b>{_e(data)}</b>"
            f" · run directory <code>{_e(run.path)}</code> · written {_e(time.strftime('%Y-%m-%d %H:%M'))} by autosub "
            f"{_e(__version__)}</p>{_headline(run)}")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><title>autosub report: {_e(run.path.name)}"
            f"</title><style>{_CSS}</style></head><body><main>{head}{''.join(sections)}</main></body></html>\n")


# ------------------------------------------------------------------------------------------------ helpers
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _acc(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.3f}"


def _int(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{int(v):,}"


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id={sid}><h2>{_e(title)}</h2>{body}</section>"


def _figure(svg_text: str, caption: str, kind: str) -> str:
    return f"<figure data-figure={kind}>{svg_text}<figcaption>{caption}</figcaption></figure>"


def _result_cfg(run: Any) -> dict:
    return (run.result or {}).get("config", {}) or {}


def _names(run: Any) -> list[str]:
    return run.block_names


def _label(names: Sequence[str], sel: Sequence[int]) -> str:
    return ", ".join(f"{i} {names[i]}" if i < len(names) else str(i) for i in sel) or "(head only)"


def _chosen(run: Any) -> tuple[list[int], str]:
    """The selection the run chose, and who chose it."""
    if run.result:
        return [int(i) for i in run.result.get("selection", [])], "autosub.search"
    if run.greedy:
        return [int(i) for i in run.greedy.get("selection", [])], "greedy"
    if run.profile and run.profile.get("ranking"):
        return [int(run.profile["ranking"][0])], "the profile's top block"
    if run.prediction and run.prediction.get("ranking"):
        return [int(run.prediction["ranking"][0])], "the predictor's top block"
    return [], ""


def _headline(run: Any) -> str:
    sel, who = _chosen(run)
    if not who:
        return ""
    names = _names(run)
    if run.result:
        hp = run.result.get("hparams", {})
        lr = f" at lr {hp['lr']:.2g}" if isinstance(hp.get("lr"), (int, float)) else ""
        text = (f"autosub.search chose <b>{_e(_label(names, sel))}</b>{_e(lr)}: validation accuracy "
                f"{_acc(run.result.get('score'))}.")
    elif run.greedy:
        text = f"Greedy chose <b>{_e(_label(names, sel))}</b>: validation accuracy {_acc(run.greedy.get('score'))}."
    else:
        text = f"Top block: <b>{_e(_label(names, sel))}</b> ({_e(who)})."
    return f"<p>{text}</p>"


# ------------------------------------------------------------------------------------------------ sections
def _final_table(run: Any) -> str:
    rows: list[tuple[str, str, Any, Any, Any, bool]] = []  # label, how, params, val, test, chosen
    for b in (run.baselines or {}).get("rows", []):
        rows.append((b.get("name", "?"), b.get("how", ""), b.get("trainable_params"), b.get("val"), b.get("test"),
                     False))
    names = _names(run)
    if run.result:
        r = run.result
        best = _trial_row(run, r.get("best_trial"))
        hp = r.get("hparams", {})
        how = f"lr {hp['lr']:.2g}, " if isinstance(hp.get("lr"), (int, float)) else ""
        spent = r.get("spent", {})
        n_prof = int((run.trials["proposed_by"] == "profile").sum()) if run.trials is not None and "proposed_by" in \
            run.trials else 0
        n_all = len(run.trials) if run.trials is not None else 0
        how += (f"best of {n_all - n_prof} trials" + (f" + a {n_prof}-block profile prior" if n_prof else "") +
                f" ({spent.get('stop_reason', '')})")
        rows.append((f"autosub.search: {_label(names, r.get('selection', []))}", how,
                     best.get("trainable_params") if best else None, r.get("score"), r.get("test_score"), True))
    elif run.profile:
        p = run.profile
        for key, e in p.get("baselines", {}).items():
            rows.append((key.replace("_", " "), f"lr {e.get('lr', float('nan')):.2g}, {e.get('epochs')} epochs, "
                         f"{len(e.get('scores', []))} seed(s)", e.get("trainable_params"), e.get("mean"), None, False))
        if p.get("ranking"):
            top = next((e for e in p["entries"] if e["selection"] == [p["ranking"][0]]), None)
            if top:
                rows.append((f"top block: {_label(names, top['selection'])}", f"{top['epochs']} epochs, "
                             f"{len(top['scores'])} seed(s)", top.get("trainable_params"), top.get("mean"), None, True))
    if run.greedy:
        g = run.greedy
        rows.append((f"greedy: {_label(names, g.get('selection', []))}",
                     f"{g.get('config', {}).get('stopping', '')} stopping, ε={g.get('config', {}).get('epsilon')}",
                     None, g.get("score"), None, not run.result))
    if not rows:
        return ""
    body = ["<table><tr><th>selection</th><th>how it was tuned</th><th>trainable params</th><th>val acc</th>"
            "<th>test acc</th></tr>"]
    for label, how, params, val, test, chosen in rows:
        body.append(f"<tr{' class=chosen' if chosen else ''}><td>{_e(label)}</td><td>{_e(how)}</td>"
                    f"<td>{_int(params)}</td><td>{_acc(val)}</td><td>{_acc(test)}</td></tr>")
    body.append("</table>")
    task = _result_cfg(run).get("task") or (run.baselines or {}).get("task") or {}
    sizes = ", ".join(f"{k} {task[k]}" for k in ("train", "val", "test") if task.get(k))
    note = ("Every row was chosen on the validation split; the test split was read once per row, after the choice, "
            "for this table only (it appears nowhere else in this report).")
    if not any(t is not None for *_, t, _c in rows):
        note = "No test accuracy: profiles and greedy runs never read the test split."
    return _section("final", "Final table", "".join(body) + f"<p class=note>{_e(note)}"
                    f"{_e(f' Examples: {sizes}.') if sizes else ''}</p>")


def _trial_row(run: Any, number: Any) -> dict | None:
    if run.trials is None or number is None or "number" not in run.trials:
        return None
    hit = run.trials[run.trials["number"] == number]
    return None if hit.empty else hit.iloc[0].to_dict()


def _diagram(run: Any) -> str:
    blocks = (run.blocks or {}).get("blocks")
    names = _names(run)
    if not names:
        return ""
    params = [int(b.get("num_params", 0)) for b in blocks] if blocks else [0] * len(names)
    sel, who = _chosen(run)
    fig = svg.block_diagram(names, params, set(sel), stem_params=int((run.blocks or {}).get("stem_params", 0)),
                            head_params=int((run.blocks or {}).get("head_params", 0)),
                            title="the network's blocks, tuned ones highlighted")
    source = (run.blocks or {}).get("source")
    cap = (f"{len(names)} blocks{f' (found by {_e(source)})' if source else ''}; highlighted: the blocks "
           f"{_e(who) or 'the run'} tuned — everything else stays frozen and is shared with the pretrained network.")
    return _section("blocks", "Chosen blocks", _figure(fig, cap, "blocks"))


def _profile(run: Any) -> str:
    names = _names(run)
    sel, _ = _chosen(run)
    if run.profile:
        p = run.profile
        entries = sorted((e for e in p["entries"] if len(e["selection"]) == 1), key=lambda e: e["selection"][0])
        bars = [svg.Bar(_short(names, e["selection"][0]), float(e["mean"]), float(e.get("std") or 0.0),
                        highlight=e["selection"][0] in sel, tooltip=f"{e['name']}: {e['mean']:.4f} ± "
                        f"{e.get('std') or 0:.4f} over {len(e['scores'])} seed(s), {e['epochs']} epochs")
                for e in entries]
        styles = {"linear_probe": (svg.PALETTE["gray"], "6 4"), "full_finetune": (svg.PALETTE["red"], "2 3")}
        lines = [svg.HLine(float(e["mean"]), k.replace("_", " "), *styles.get(k, (svg.PALETTE["green"], "4 2")),
                           band=float(e.get("std") or 0.0)) for k, e in p.get("baselines", {}).items()]
        cfg = p.get("config", {})
        cap = (f"Validation accuracy of SubTuning each block alone: mean ± std over {cfg.get('seeds', '?')} seed(s), "
               f"{cfg.get('fidelity', 'full')} fidelity, {cfg.get('epochs', '?')} epochs; dashed lines: the baselines "
               "(band: ± std).")
        return _section("profile", "Finetuning profile", _figure(svg.bar_chart(bars, lines=lines, title="profile"),
                                                                  _e(cap), "profile"))
    prior = (run.result or {}).get("prior")
    lines = _baseline_lines(run)
    if prior and prior.get("scores"):
        scores = {int(k): float(v) for k, v in prior["scores"].items()}
        bars = [svg.Bar(_short(names, b), s, highlight=b in sel) for b, s in sorted(scores.items())]
        source = prior.get("source", "profile")
        if source != "profile":  # a zero-cost ranking or the user's scores: not accuracies, no baseline lines
            evidence = prior.get("evidence") or {}
            if source == "predictor":
                what = "the learned layer predictor's score"
            elif evidence.get("kind") == "statistic":
                what = f"the {source!r} statistic (oriented so that higher is better)"
            else:
                what = "the given score"
            how = (f", from network statistics in {evidence['wall_time']:.1f}s with no training"
                   if evidence.get("wall_time") is not None else "")
            cap = f"The search's prior: {what} per block{how}; higher = better to tune (only the order is used)."
            chart = svg.bar_chart(bars, title="prior", ylabel="prior score", unit=False)
            return _section("profile", "Prior", _figure(chart, _e(cap), "profile"))
        cap = ("The search's prior: a one-epoch profile of every block (one seed, inside the search budget); these "
               "runs are trials of the study too. Dashed lines: the baselines' validation accuracy.")
        return _section("profile", "Profile prior", _figure(svg.bar_chart(bars, lines=lines, title="prior"), _e(cap),
                                                             "profile"))
    if run.prediction and run.prediction.get("scores"):
        pred = run.prediction
        bars = [svg.Bar(_short(names, i), float(v), highlight=i in sel) for i, v in enumerate(pred["scores"])]
        cap = "The predictor's value for each block (no training); higher is predicted better."
        return _section("profile", "Predicted block values",
                        _figure(svg.bar_chart(bars, ylabel="predicted value", unit=False, title="prediction"), _e(cap),
                                "profile"))
    return ""


def _baseline_lines(run: Any) -> list[svg.HLine]:
    colors = [(svg.PALETTE["gray"], "6 4"), (svg.PALETTE["red"], "2 3")]
    out = []
    for k, b in enumerate((run.baselines or {}).get("rows", [])):
        v = _num(b.get("val"))
        if v is not None:
            out.append(svg.HLine(v, str(b.get("name", "baseline")), *colors[k % 2]))
    return out


def _short(names: Sequence[str], i: int) -> str:
    return f"{i} {names[i]}" if i < len(names) else str(i)


def _pairs(run: Any) -> str:
    pairs: list[tuple[tuple[int, int], float]] = []
    single: dict[int, float] = {}
    if run.profile and run.profile.get("pairs"):
        pairs = [((p["selection"][0], p["selection"][1]), float(p["mean"])) for p in run.profile["pairs"]]
        single = {e["selection"][0]: float(e["mean"]) for e in run.profile["entries"] if len(e["selection"]) == 1}
    elif run.result and (run.result.get("prior") or {}).get("pairs"):
        prior = run.result["prior"]
        pairs = [((int(p[0][0]), int(p[0][1])), float(p[1])) for p in prior["pairs"]]
        single = {int(k): float(v) for k, v in prior.get("scores", {}).items()}
    if not pairs:
        return ""
    keep = sorted({i for (a, b), _ in pairs for i in (a, b)})
    pos = {b: k for k, b in enumerate(keep)}
    m = [[float("nan")] * len(keep) for _ in keep]
    for b in keep:
        m[pos[b]][pos[b]] = single.get(b, float("nan"))
    for (a, b), v in pairs:
        m[pos[a]][pos[b]] = m[pos[b]][pos[a]] = v
    names = _names(run)
    fig = svg.heatmap(m, [str(b) for b in keep], tooltip_labels=[_short(names, b) for b in keep],
                      title="pair heatmap")
    cap = "Validation accuracy of tuning blocks i and j together (diagonal: block alone); hover a cell for its value."
    return _section("pairs", "Pairs of blocks", _figure(fig, _e(cap), "pairs"))


def _greedy(run: Any) -> str:
    g = run.greedy
    if not g or not g.get("path"):
        return ""
    names = _names(run)
    cand_pts, cand_tips, path_pts, rejected = [], [], [(0.0, float(g["start_score"]))], []
    for st in g["path"]:
        x = st["step"] + 1.0
        for b, s in st["candidates"].items():
            cand_pts.append((x, float(s)))
            cand_tips.append(f"step {st['step'] + 1}: {'+' if g.get('config', {}).get('direction', 'forward') == 'forward' else '−'}"
                             f"{_short(names, int(b))} → {float(s):.4f}")
        path_pts.append((x, float(st["score"])))
        if not st["accepted"]:
            rejected.append((x, float(st["score"])))
    returned = next((p for p, st in zip(path_pts[1:], g["path"]) if st["selection"] == g["selection"]), path_pts[0])
    series = [svg.Series("candidates", cand_pts, color=svg.PALETTE["gray"], tooltips=cand_tips, size=3),
              svg.Series("chosen move", path_pts, mode="line", color=svg.PALETTE["blue"]),
              svg.Series("rejected (gain < ε)", rejected, color=svg.PALETTE["red"], size=5),
              svg.Series(f"returned {g['selection']}", [returned], color=svg.PALETTE["gold"], size=7)]
    fig = svg.xy_chart(series, xlabel="greedy step (0 = start)", ylabel="validation accuracy", title="greedy path")
    cfg = g.get("config", {})
    cap = (f"Greedy SubTuning ({cfg.get('direction', 'forward')}, {cfg.get('stopping', 'strict')} stopping, "
           f"ε={cfg.get('epsilon')}): every candidate at every step, the move taken, and the returned subset. "
           f"Stopped: {g.get('stop_reason', '')}.")
    return _section("greedy", "Greedy path", _figure(fig, _e(cap), "greedy"))


def _history(run: Any) -> str:
    t = run.trials
    if t is None or t.empty or "score" not in t:
        return ""
    t = t.sort_values("number")
    groups = {"profile prior": ([], [], svg.PALETTE["orange"], False), "complete": ([], [], svg.PALETTE["blue"], False),
              "pruned": ([], [], svg.PALETTE["gray"], True)}
    comp: dict[str, list] = {k: [] for k in groups}
    best, best_pts, best_comp = -math.inf, [], []
    failed = []
    for row in t.to_dict("records"):
        n, score, state = int(row["number"]), _num(row.get("score")), str(row.get("state"))
        cc = _num(row.get("cum_compute"))
        by = str(row.get("proposed_by") or "")
        if state == "FAIL" or score is None:
            failed.append(n)
            continue
        key = "profile prior" if by == "profile" else "pruned" if state == "PRUNED" else "complete"
        tip = f"trial {n}: {row.get('selection')} → {score:.4f} ({state.lower()}, {by})"
        groups[key][0].append((float(n), score))
        groups[key][1].append(tip)
        if cc is not None:
            comp[key].append(((cc, score), tip))
        if state == "COMPLETE" and score > best:
            best = score
        if best > -math.inf:
            best_pts.append((float(n), best))
            if cc is not None:
                best_comp.append((cc, best))
    def series(use_compute: bool) -> list[svg.Series]:
        out = []
        for k, (pts, tips, color, hollow) in groups.items():
            if use_compute:
                pts, tips = [p for p, _ in comp[k]], [tip for _, tip in comp[k]]
            if pts:
                out.append(svg.Series(k, pts, color=color, tooltips=tips, hollow=hollow))
        bp = best_comp if use_compute else best_pts
        if bp:
            out.append(svg.Series("best so far", bp, mode="step", color=svg.PALETTE["green"]))
        return out
    figs = [_figure(svg.xy_chart(series(False), xlabel="trial", ylabel="validation accuracy",
                                 title="score vs trial"), "Score of every trial (pruned: last reported epoch).",
                    "history")]
    if any(comp.values()):
        figs.append(_figure(svg.xy_chart(series(True), xlabel="compute spent (full-finetune epochs)",
                                         ylabel="validation accuracy", title="score vs compute"),
                            "The same trials against the compute spent so far, in full-finetune-epoch equivalents.",
                            "history"))
    note = f"<p class=note>{len(failed)} failed trial(s): {_e(failed)} (reasons in trials.csv).</p>" if failed else ""
    return _section("history", "Search history", f"<div class=row>{''.join(figs)}</div>{note}")


def _pareto(run: Any) -> str:
    t = run.trials
    if t is None or t.empty or "added_cost" not in t or "score" not in t:
        return ""
    done = t[(t["state"] == "COMPLETE") & t["added_cost"].notna() & t["score"].notna()]
    if done.empty:
        return ""
    front_numbers = {int(p["number"]) for p in (run.result or {}).get("pareto", [])}
    pts = [(float(r["added_cost"]), float(r["score"])) for r in done.to_dict("records")]
    tips = [f"trial {int(r['number'])}: {r['selection']} → {float(r['score']):.4f}, added cost "
            f"{float(r['added_cost']):.3f}" for r in done.to_dict("records")]
    front = sorted((float(r["added_cost"]), float(r["score"])) for r in done.to_dict("records")
                   if int(r["number"]) in front_numbers)
    series = [svg.Series("trials", pts, color=svg.PALETTE["light"], tooltips=tips)]
    if front:
        series.append(svg.Series("Pareto front", front, mode="step", color=svg.PALETTE["orange"]))
        series.append(svg.Series("front trials", front, color=svg.PALETTE["orange"], size=5))
    fig = svg.xy_chart(series, xlabel="added inference cost (share of the network's FLOPs run per task)",
                       ylabel="validation accuracy", title="Pareto front")
    cap = ("Accuracy against the inference cost a selection adds when tasks share one frozen trunk (the forward pass "
           "forks at the first tuned block); the front holds the trials no other trial beats on both.")
    return _section("pareto", "Pareto front", _figure(fig, _e(cap), "pareto"))


def _provenance(run: Any) -> str:
    from .rundir import toml_dumps

    parts = []
    if run.command:
        parts.append(f"<p>Command:</p><pre>{_e(run.command)}</pre>")
    if run.config:
        parts.append(f"<p>Resolved config (<code>config.toml</code>; <code>autosub {_e(run.kind)} --config "
                     f"config.toml</code> runs it again):</p><pre>{_e(toml_dumps(run.config))}</pre>")
    return _section("config", "Config and command", "".join(parts)) if parts else ""
