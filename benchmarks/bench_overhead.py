"""Per-trial framework overhead of the search engines: everything that is not training, as a share of the time.

Tiny CI-size trials (timm's ``test_resnet``, untrained, on 16 px synthetic images, 1 epoch, batch 32) searched with
the public ``autosub.search`` for 8, 32 and 128 trials, on the Optuna engine (in process, its default storage: a
journal file in the run directory) and the Ray engine (local Ray, one trial at a time on one CPU, so both engines do
the same serial work with one torch thread), with ``--fused`` the Optuna engine with fused trials, with
``--ray-fused`` the Ray engine with fused trials (one Tune trial hosts a group of up to 8), and with
``--sqlite`` the Optuna engine on the earlier default storage, SQLite in the run directory
(``optuna-sqlite``). Measured only through the public API: ``search()``'s wall clock, a ``RunConfig`` callback
(its clock time when each trial is told), each trial's ``seconds`` attribute (the time inside the trial function:
copy, training, validation) and ``result.spent["phases"]`` (autosub's own setup: cache fill, epoch calibration).

    window      = last trial told − first trial started (its ``datetime_start`` in the study)
    overhead_share        = (window − Σ seconds) / window     steady state: ask/tell, storage, scheduling, reporting
    overhead_share_total  = (last told − search() called − Σ seconds − setup) / (that span − setup), setup =
                            the cache and calibration phases:
                            with the engine's start-up (study creation; ray.init and worker start-up on Ray)
    overhead_s_per_trial  = (window − Σ seconds) / trials

A fused trial's ``seconds`` is its share of its group's wall time, so Σ seconds is the time inside groups.

``optuna_only`` times Optuna's own ask/tell with the same sampler, the same number of user attributes per trial and
no training (public Optuna API) on SQLite, a journal file and in memory: how much of the Optuna engine's overhead is
Optuna and its storage. Results: ``benchmarks/results/overhead.json``
with ``overhead_share = {engine: {trials: share}}``.

    RAY_AUTH_MODE=disabled python benchmarks/bench_overhead.py            # 8, 32, 128 trials, both engines
    python benchmarks/bench_overhead.py --quick --no-ray                  # 8, 32 trials, Optuna only
    python benchmarks/bench_overhead.py --fused                           # + the Optuna engine with fused trials
    python benchmarks/bench_overhead.py --no-ray --sqlite                 # journal (default) vs SQLite, one run
    RAY_AUTH_MODE=disabled python benchmarks/bench_overhead.py --ray-fused --trials 8,32 \
        --out benchmarks/results/overhead_ray_fused.json                 # Ray: one trial per Tune trial vs groups
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

import autosub  # noqa: E402
from autosub.data.task import Split, Task  # noqa: E402


def make_task(n: int, px: int, seed: int = 0) -> Task:
    """A seeded, learnable synthetic image task (the class shifts one colour channel)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 3, px, px, generator=g)
    x[:, 0] += (y.float() - 2).view(-1, 1, 1)
    k = int(n * 2 / 3)
    return Task(Split(x[:k], y[:k], name="train"), Split(x[k:], y[k:], name="val"), 4)


def one_search(model, task, trials: int, engine: str) -> dict:
    """One search of ``trials`` tiny trials on ``engine`` ("optuna", "optuna-fused": the Optuna engine with
    ``TrainingConfig(fuse=True)``, "optuna-sqlite": on SQLite, "ray"); the overhead numbers of the module docs."""
    backend = "ray" if engine.startswith("ray") else "optuna"
    training = {"fuse": engine.endswith("-fused")}
    told: list[tuple[float, float, str]] = []  # (clock when told, trial seconds, state)

    def on_trial(record, _model) -> None:
        told.append((time.time(), float(record.seconds or 0.0), record.state))

    # Ray: one trial at a time on one CPU (Ray then gives the worker one torch thread, as the driver has with
    # --threads 1). Giving a trial every core made its worker train with 2 threads on 2 cores shared with Ray's own
    # processes: 5-45x slower here (0.4-3.4 s vs 0.07 s), time the overhead formula counted as training.
    chosen = autosub.RayBackend(resources_per_trial={"cpu": 1}, max_concurrent_trials=1) if backend == "ray" \
        else backend
    run = {"run_dir": tempfile.mkdtemp(prefix="asb-ovh"), "progress": False, "callbacks": [on_trial]}
    if engine == "optuna-sqlite":
        run["storage"] = f"sqlite:///{run['run_dir']}/study.db"
    t0 = time.time()  # wall clock: comparable with the study's datetime_start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        res = autosub.search(model, task, autosub.Budget(trials=trials), backend=chosen, prior=None, pruner=None,
                             epochs=1, seed=0, run=run, training=training)
    wall = time.time() - t0
    told.sort()
    n = len(told)
    work = sum(s for _, s, _ in told)
    # the first trial's start as the study recorded it (fused trials are told together at the end of their group,
    # so "first told − its seconds" would be wrong for them)
    first_start = min(t.datetime_start.timestamp() for t in res.study.get_trials(deepcopy=False)
                      if t.datetime_start is not None and t.state.is_finished())
    window = told[-1][0] - first_start
    phases = {k: v for k, v in res.spent.get("phases", {}).items() if k in ("cache", "calibration")}
    setup = sum(phases.values())
    span = told[-1][0] - t0 - setup
    attrs = statistics.median(len(t.user_attrs) for t in res.study.get_trials(deepcopy=False))
    threads = sorted({r.user_attrs["threads"] for r in res.records if "threads" in r.user_attrs}) or \
        [torch.get_num_threads()]
    return {"trials": n, "states": sorted({st for _, _, st in told}), "wall_s": round(wall, 3),
            "user_attrs_per_trial": attrs,
            "train_s": round(work, 3), "train_s_per_trial": round(work / n, 4),
            "window_s": round(window, 3), "startup_s": round(first_start - t0 - setup, 3),
            "setup_phases_s": {k: round(v, 3) for k, v in phases.items()},
            "overhead_s_per_trial": round((window - work) / n, 4),
            "overhead_share": round((window - work) / window, 4),
            "overhead_share_total": round((span - work) / span, 4),
            "fused_trials": sum(bool(r.user_attrs.get("fused")) for r in res.records),
            "trial_threads": threads,
            "loadavg": os.getloadavg()}


def optuna_only(trials: int, n_blocks: int, attrs: int, storage: str) -> dict:
    """Optuna's own ask/tell with TPE on a space of the same shape, with ``attrs`` user attributes per trial (as many
    as autosub's engine writes), without training — on SQLite, a journal file or in memory."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = tempfile.mkdtemp(prefix="asb-optuna")
    if storage == "sqlite":
        where = f"sqlite:///{d}/study.db"
    elif storage == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        where = JournalStorage(JournalFileBackend(f"{d}/journal.log"))
    else:
        where = None
    study = optuna.create_study(storage=where, sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    t0 = time.perf_counter()
    for i in range(trials):
        trial = study.ask()
        picks = [trial.suggest_categorical(f"b{j}", [False, True]) for j in range(n_blocks)]
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.suggest_float("weight_decay", 1e-4, 0.1, log=True)
        for k in range(attrs):
            trial.set_user_attr(f"attr{k}", [j for j, p in enumerate(picks) if p])
        study.tell(trial, float(sum(picks)) / n_blocks)
    return {"trials": trials, "attrs_per_trial": attrs, "s_per_trial": round((time.perf_counter() - t0) / trials, 5)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 and 32 trials only")
    ap.add_argument("--trials", default=None, help="comma-separated trial counts (default 8,32,128)")
    ap.add_argument("--no-ray", action="store_true", help="Optuna engine only")
    ap.add_argument("--fused", action="store_true",
                    help="also the Optuna engine with fused trials (TrainingConfig(fuse=True)) as 'optuna-fused'")
    ap.add_argument("--ray-fused", action="store_true",
                    help="also the Ray engine with fused trials (one Tune trial hosts a group) as 'ray-fused'")
    ap.add_argument("--sqlite", action="store_true",
                    help="also the Optuna engine on SQLite (the earlier default storage) as 'optuna-sqlite'")
    ap.add_argument("--ray-max", type=int, default=128, help="largest trial count run on Ray")
    ap.add_argument("--examples", type=int, default=96, help="examples in the tiny task (2/3 train)")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the driver (default 1)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "overhead.json"))
    args = ap.parse_args(argv)
    counts = [int(c) for c in (args.trials or ("8,32" if args.quick else "8,32,128")).split(",")]
    torch.set_num_threads(args.threads)
    logging.getLogger("autosub").setLevel(logging.ERROR)
    load0 = os.getloadavg()
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    task = make_task(args.examples, args.image_size)
    n_blocks = len(autosub.discover_blocks(model))
    engines = ["optuna"] + (["optuna-sqlite"] if args.sqlite else []) + (["optuna-fused"] if args.fused else []) \
        + ([] if args.no_ray else ["ray"]) + (["ray-fused"] if args.ray_fused else [])
    runs: dict[str, dict[str, dict]] = {e: {} for e in engines}
    # the in-process engines interleaved per trial count (a drift of the machine's load hits them alike), Ray last
    order = [(e, n) for n in counts for e in engines if not e.startswith("ray")] + \
        [(e, n) for n in counts for e in engines if e.startswith("ray") and n <= args.ray_max]
    for engine, n in order:
        r = one_search(model, task, n, engine)
        runs[engine][str(n)] = r
        print(f"{engine:>13} {n:>4} trials: train {r['train_s_per_trial']:.3f} s/trial, overhead "
              f"{r['overhead_s_per_trial']:.3f} s/trial → share {r['overhead_share']:.1%} (with start-up "
              f"{r['startup_s']:.1f} s: {r['overhead_share_total']:.1%}); load {os.getloadavg()[0]:.1f}", flush=True)
    if any(e.startswith("ray") for e in engines):
        import ray

        ray.shutdown()
    attrs = int(max(r["user_attrs_per_trial"] for r in runs["optuna"].values()))
    runs = {e: v for e, v in runs.items() if v}
    base = {st: {str(n): optuna_only(n, n_blocks, attrs, st) for n in counts} for st in ("sqlite", "journal", "memory")}
    result = {
        "overhead_share": {e: {n: r["overhead_share"] for n, r in v.items()} for e, v in runs.items()},
        "overhead_share_total": {e: {n: r["overhead_share_total"] for n, r in v.items()} for e, v in runs.items()},
        "overhead_s_per_trial": {e: {n: r["overhead_s_per_trial"] for n, r in v.items()} for e, v in runs.items()},
        "optuna_only_s_per_trial": {st: {n: b["s_per_trial"] for n, b in v.items()} for st, v in base.items()},
        "runs": runs,
        "config": {"model": "timm test_resnet (untrained)", "examples": args.examples, "image_size": args.image_size,
                   "epochs": 1, "batch_size": 32, "selector": "tpe", "prior": None, "pruner": None,
                   "storage": "the default (a journal file in run_dir); optuna-sqlite: sqlite in run_dir",
                   "ray": "local, one trial at a time on 1 CPU (1 torch thread)",
                   "optuna-fused": "the Optuna engine with TrainingConfig(fuse=True): up to 8 trials per group; "
                                   "a trial's seconds are its share of the group's wall time",
                   "ray-fused": "the Ray engine with TrainingConfig(fuse=True): one Tune trial hosts up to 8 trials",
                   "threads": args.threads, "trials": counts},
        "machine": {**describe_machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "command": "python " + " ".join(["benchmarks/bench_overhead.py",
                                         *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"\n{'engine':>13} {'trials':>6} {'train s/trial':>13} {'overhead s/trial':>16} {'share':>7} "
          f"{'share incl. start-up':>20}")
    for e, v in runs.items():
        for n, r in v.items():
            print(f"{e:>13} {n:>6} {r['train_s_per_trial']:>13.3f} {r['overhead_s_per_trial']:>16.3f} "
                  f"{r['overhead_share']:>7.1%} {r['overhead_share_total']:>20.1%}")
    for st, v in base.items():
        print(f"optuna ask/tell alone ({st}, TPE, {attrs} user attrs): "
              + ", ".join(f"{n} trials {b['s_per_trial'] * 1e3:.1f} ms/trial" for n, b in v.items()))
    median = statistics.median(r["train_s_per_trial"] for v in runs.values() for r in v.values())
    print(f"median train s/trial {median:.3f}"
          f"; load average {load0[0]:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
