"""Layer-predictor benchmark: leave-one-(model, dataset)-out against the measured profiles of the shipped corpus.

For every (model, dataset) pair of ``autosub/selection/corpus/``, the predictor is fitted on the *other* pairs'
entries and scores the held-out pair's blocks; each single statistic (``rgn``, ``fisher``, ``snip``, ``synflow``,
``cka``, ``logme``, ``hscore``, ``lp``, ``spectrum``, ``depth``, ``params``, plus ``flops``, ``reshapes``) ranks the blocks on its
own, with its direction (higher or lower = better) chosen on the same training pairs — the strongest fair version of
each peer. Per held-out entry: Spearman with the measured block scores; top-1 hit = the predicted best block is a
measured best block; top-3 hit = the predicted best block is among the measured top 3. Means over entries.

Also: leave-one-*model*-out (a new architecture), the noise ceiling (seed-0 vs seed-1 profiles of the same
entries, ``benchmarks/results/corpus_seed1/``), the predictor's variants (``ridge``, ``pairwise``, ``rank`` target), a drop-one ablation over the statistics
(which ones help), the time to fit the predictor from the JSON, and ``stats_time_share`` = the wall time of the
statistics over the wall time of the entry's profile (CPU-time share too: less sensitive to other processes).

    PYTHONPATH=. python benchmarks/bench_predictor.py            # writes benchmarks/results/predictor.json
    PYTHONPATH=. python benchmarks/bench_predictor.py --no-ablation
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from autosub.selection.predictor import BLOCK_FEATURES, LayerPredictor, directions, load_corpus  # noqa: E402
from autosub.selection.profiling import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ("rgn", "fisher", "snip", "synflow", "cka", "logme", "hscore", "lp", "spectrum", "depth", "params", "flops",
          "reshapes")
VARIANTS = {"predictor": {}, "predictor_all_features": {"features": BLOCK_FEATURES},
            "predictor_ridge": {"estimator": "ridge"},
            "predictor_pairwise": {"estimator": "pairwise"}, "predictor_rank_target": {"target": "rank"}}


def hits(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(top-1, top-3) hit of the predicted best block against the measured scores (ties count as hits)."""
    best = int(np.argmax(pred))
    ordered = np.sort(truth)[::-1]
    return float(truth[best] >= ordered[0]), float(truth[best] >= ordered[min(2, len(ordered) - 1)])


def evaluate(entries, methods: dict, *, by=lambda e: e.group) -> dict:
    """Leave-one-group-out (default group: (model, dataset)): per method and held-out entry, Spearman and hits."""
    groups = sorted({by(e) for e in entries})
    rows = {m: [] for m in methods}
    signs = {s: [] for s in SINGLE}
    for g in groups:
        train = [e for e in entries if by(e) != g]
        held = [e for e in entries if by(e) == g]
        for name, spec in methods.items():
            if spec[0] == "stat":
                stat = spec[1]
                sign = directions(train, [stat])[stat]
                signs[stat].append(sign)
                preds = [sign * np.asarray(e.stats.values[stat], dtype=float) for e in held]
            else:
                model = LayerPredictor(**spec[1]).fit([e.stats for e in train], [e.scores for e in train])
                preds = [model.predict(e.stats) for e in held]
            for e, p in zip(held, preds):
                rho = spearmanr(p, e.scores).statistic
                t1, t3 = hits(p, e.scores)
                rows[name].append({"id": e.id, "spearman": float(0.0 if np.isnan(rho) else rho), "top1": t1,
                                   "top3": t3})
    summary = {m: {k: float(np.mean([r[k] for r in rs])) for k in ("spearman", "top1", "top3")}
               for m, rs in rows.items()}
    return {"summary": summary, "rows": rows, "signs": {s: float(np.mean(v)) for s, v in signs.items() if v},
            "groups": [list(g) if isinstance(g, tuple) else g for g in groups]}


def back_to_back(folder: Path) -> list[float]:
    """stats / profile wall time of entries whose statistics and profile ran in one process, one after the other.

    The shipped entries' statistics were recomputed later (``--stats-only``) under another load than their profiles
    ran, so their ratio is not a fair measurement; the second-seed run measured both back to back.
    """
    import json

    out = []
    for path in sorted(folder.glob("*.json")):
        d = json.loads(path.read_text())
        if d.get("profile_wall") and d.get("stats_wall"):
            out.append(float(d["stats_wall"]) / float(d["profile_wall"]))
    return out


def ceiling(entries, folder: Path) -> dict:
    """Spearman between the shipped (seed 0) profile and a second-seed profile of the same entry: the noise ceiling.

    If two measurements agree at r, the truth agrees with one of them at about √r: no predictor can expect more
    against a single-seed profile.
    """
    import json

    by_id = {e.id: e for e in entries}
    out = {}
    for path in sorted(folder.glob("*.json")):
        d = json.loads(path.read_text())
        if d.get("id") in by_id and "profile" in d:
            other = [float(e["mean"]) for e in sorted(d["profile"]["entries"], key=lambda e: e["selection"][0])]
            out[d["id"]] = float(spearmanr(other, by_id[d["id"]].scores).statistic)
    if not out:
        return {}
    r = float(np.mean(list(out.values())))
    return {"per_entry": out, "mean_seed_to_seed": r, "expected_max_vs_one_seed": float(np.sqrt(max(r, 0.0)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None, help="corpus folder (default: the shipped one)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the drop-one ablation")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predictor.json")
    ap.add_argument("--seed1", type=Path, default=ROOT / "benchmarks" / "results" / "corpus_seed1",
                    help="second-seed profiles (build_corpus.py --profile-seed 1) for the noise ceiling")
    args = ap.parse_args(argv)
    command = "PYTHONPATH=. python benchmarks/bench_predictor.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    entries = load_corpus(args.corpus)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    LayerPredictor.from_corpus(entries)
    fit_s = time.perf_counter() - t0

    methods = {name: ("model", params) for name, params in VARIANTS.items()}
    methods.update({s: ("stat", s) for s in SINGLE})
    result = evaluate(entries, methods)
    summary = result["summary"]
    unseen = evaluate(entries, methods, by=lambda e: e.model)["summary"]  # a new architecture: harder
    noise = ceiling(entries, args.seed1) if args.seed1.is_dir() else {}

    ablation = {}  # drop one feature from *all* of them: the evidence behind DEFAULT_FEATURES
    if not args.no_ablation:
        for stat in BLOCK_FEATURES:
            feats = tuple(f for f in BLOCK_FEATURES if f != stat)
            ablation[stat] = evaluate(entries, {"p": ("model", {"features": feats})})["summary"]["p"]["spearman"]
        ablation["<no task features>"] = evaluate(entries, {"p": ("model", {"features": BLOCK_FEATURES,
                                                                             "task_features": ()})})[
            "summary"]["p"]["spearman"]

    share = [e.stats_wall / e.profile_wall for e in entries if e.profile_wall > 0]
    cpu_share = [e.stats_cpu / e.profile_cpu for e in entries if e.profile_cpu > 0]
    paired = back_to_back(args.seed1) if args.seed1.is_dir() else []
    singles = {m: v for m, v in summary.items() if m in SINGLE}
    best_single = max(singles, key=lambda m: singles[m]["spearman"])
    out = {
        "command": command, "machine": describe_machine(), "n_entries": len(entries), "groups": result["groups"],
        "entries": [e.id for e in entries],
        "mean_spearman": {m: v["spearman"] for m, v in summary.items()},
        "top1": {m: v["top1"] for m, v in summary.items()},
        "top3": {m: v["top3"] for m, v in summary.items()},
        "stats_time_share": float(np.mean(paired)) if paired else float(np.mean(share)),
        "stats_time_share_max": float(np.max(paired)) if paired else float(np.max(share)),
        "stats_time_share_source": "back-to-back runs (corpus_seed1)" if paired else "corpus entries",
        "stats_time_share_corpus_wall": float(np.mean(share)),
        "stats_cpu_share": float(np.mean(cpu_share)) if cpu_share else None,
        "leave_one_model_out": {"mean_spearman": {m: v["spearman"] for m, v in unseen.items()},
                                "top1": {m: v["top1"] for m, v in unseen.items()},
                                "top3": {m: v["top3"] for m, v in unseen.items()}},
        "noise_ceiling": noise,
        "stat_direction": result["signs"], "best_single_statistic": best_single,
        "predictor_beats_every_single": bool(summary["predictor"]["spearman"] > singles[best_single]["spearman"]),
        "ablation_drop_one_spearman": ablation, "corpus_load_s": load_s, "predictor_fit_s": fit_s,
        "per_entry": result["rows"], "predictor_params": LayerPredictor().get_params(),
    }
    write_json(out, args.out)
    print(f"{len(entries)} entries, {len(result['groups'])} (model, dataset) groups; predictor fit {fit_s:.2f}s "
          f"(corpus load {load_s:.2f}s)")
    print(f"{'method':<24}{'spearman':>10}{'top1':>8}{'top3':>8}   leave-one-model-out: spearman top1")
    for m, v in sorted(summary.items(), key=lambda kv: -kv[1]["spearman"]):
        print(f"{m:<24}{v['spearman']:>10.3f}{v['top1']:>8.2f}{v['top3']:>8.2f}   "
              f"{unseen[m]['spearman']:>27.3f}{unseen[m]['top1']:>5.2f}")
    if noise:
        print(f"noise ceiling: seed-0 vs seed-1 profiles agree at Spearman {noise['mean_seed_to_seed']:.3f} on "
              f"{len(noise['per_entry'])} entries → at most ≈ {noise['expected_max_vs_one_seed']:.3f} against one seed")
    if ablation:
        base = summary["predictor_all_features"]["spearman"]
        print(f"drop-one ablation from all features (base {base:.3f}; below base = the feature helps):")
        print("  " + ", ".join(f"{k} {v:.3f} ({v - base:+.3f})" for k, v in sorted(ablation.items(),
                                                                                 key=lambda kv: kv[1])))
    print(f"stats_time_share {out['stats_time_share']:.3f} ({out['stats_time_share_source']}; max "
          f"{out['stats_time_share_max']:.3f}; corpus wall {out['stats_time_share_corpus_wall']:.3f}; CPU "
          f"{out['stats_cpu_share'] if out['stats_cpu_share'] is not None else float('nan'):.3f}); "
          f"best single statistic: {best_single}; predictor beats every single: {out['predictor_beats_every_single']}")
    print(f"→ {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
