"""Fractional GPUs: aggregate training examples/s with 1, 2 and 4 concurrent trials on one GPU, through backend="ray".

For k in (1, 2, 4) it runs ``autosub.search(..., backend=RayBackend(resources_per_trial={"cpu": 1, "gpu": 1/k}))``
with a budget of k trials, so k trials share the GPU at once: ResNet-50 (untrained — speed does not depend on
the weights), all 16 blocks + head finetuned (the stem stays frozen, as SubTuning leaves it), batch 32, 224 px
synthetic images, bf16 autocast, no prefix cache, no pruning. Every trial records when each epoch ended; the
aggregate rate is the examples all trials processed in the window where all of them were past their first
(warm-up) epoch and none had finished, divided by that window. A plain in-process ``fit`` (no Ray) gives the
reference. Goal (issue 5): ≥ 1.9× the 1-trial rate with 2–4 trials; anchor on an H200 with plain separate
processes: 1 → 1,483 img/s, 2 → 2,928, 4 → 2,978.

Needs a CUDA GPU and ray[tune] + optuna (the GPU image lacks them; bring wheels):

    pip install --no-index --find-links wheels/ 'ray[tune]' optuna && pip install --no-deps -e .
    RAY_AUTH_MODE=disabled python benchmarks/gpu_packing.py            # 8 epochs × 512 images per trial (< 5 min)
    RAY_AUTH_MODE=disabled python benchmarks/gpu_packing.py --quick    # 4 epochs × 256 images

Prints a table and writes ``benchmarks/results/gpu_packing.json`` with the machine and the command.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

log = logging.getLogger("gpu_packing")
ANCHOR = {"1": 1483, "2": 2928, "4": 2978}  # img/s, H200, plain separate processes (issue 5)


def preflight() -> None:
    """Fail at once, with what to do, when there is no GPU or the Ray extra is missing."""
    if not torch.cuda.is_available():
        sys.exit("gpu_packing.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine "
                 f"(torch {torch.__version__}). Run it on the GPU machine; for CPU numbers use "
                 "benchmarks/bench_ray.py.")
    missing = [m for m in ("ray", "optuna") if not _importable(m)]
    if missing:
        sys.exit(f"gpu_packing.py needs {missing}: pip install --no-index --find-links wheels/ 'ray[tune]' optuna "
                 "(or pip install 'autosub[ray]' with internet).")


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def make_task(n: int, px: int = 224, seed: int = 0):
    """Random 224 px images, 10 classes (throughput does not depend on the pixels)."""
    from autosub.data.task import Split, Task

    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n + 64, 3, px, px, generator=g), torch.randint(0, 10, (n + 64,), generator=g)
    return Task(Split(x[:n], y[:n], name="train"), Split(x[n:], y[n:], name="val"), 10)


def aggregate(records, n_train: int) -> tuple[float | None, float]:
    """(examples/s over the window where every trial was past its first epoch and none had ended, its length)."""
    return overlap_rate([r.user_attrs.get("epoch_end_times") or [] for r in records], n_train)


def overlap_rate(epoch_end_times: list[list[float]], n_train: int) -> tuple[float | None, float]:
    """Aggregate examples/s of concurrent runs, from each run's epoch end times, over their common window."""
    ends = [np.asarray(e, dtype=float) for e in epoch_end_times]
    ends = [e for e in ends if len(e) >= 2]
    if len(ends) != len(epoch_end_times) or not ends:
        return None, 0.0
    t0, t1 = max(e[0] for e in ends), min(e[-1] for e in ends)
    if t1 <= t0:
        return None, 0.0
    done = lambda e, t: np.interp(t, e, np.arange(1, len(e) + 1) * n_train)  # noqa: E731
    return float(sum(done(e, t1) - done(e, t0) for e in ends) / (t1 - t0)), float(t1 - t0)


def _process_trial(n: int, epochs: int, start, queue, device: str = "cuda", px: int = 224) -> None:
    """One concurrent trial in its own process: autosub.fit on the GPU, reporting its epoch end times."""
    import timm

    from autosub import discover_blocks, fit

    torch.backends.cudnn.benchmark = True
    model = timm.create_model("resnet50", pretrained=False).eval()
    task = make_task(n, px)
    ends: list[float] = []
    start.wait()
    res = fit(model, task, tuple(range(len(discover_blocks(model)))), epochs=epochs, batch_size=32, device=device,
              cache=False, keep_model=False, callback=lambda e, s: ends.append(time.time()))
    queue.put((ends, res.examples_per_s))


def run_processes(trials: list[int], *, n: int, epochs: int, device: str = "cuda", px: int = 224) -> list[dict]:
    """The same packing measured with k plain processes running autosub.fit (no Ray): what the hardware gives."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = []
    for k in trials:
        start, queue = ctx.Barrier(k + 1), ctx.Queue()
        procs = [ctx.Process(target=_process_trial, args=(n, epochs, start, queue, device, px))
                 for _ in range(k)]
        for p in procs:
            p.start()
        start.wait()
        got = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        rate, window = overlap_rate([e for e, _ in got], n)
        rows.append({"trials": str(k), "aggregate": rate, "sum_per_trial": sum(r for _, r in got),
                     "window_s": round(window, 2), "per_trial": [round(r, 1) for _, r in got]})
        log.info("%d process(es)/GPU: %s", k, rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 epochs × 256 images per trial")
    ap.add_argument("--trials", default="1,2,4", help="concurrent trials per GPU to measure")
    ap.add_argument("--engine", choices=["ray", "processes"], default="ray",
                    help="'processes': k plain processes running autosub.fit, for GPU machines without Ray")
    ap.add_argument("--dry-run-cpu", action="store_true", help=argparse.SUPPRESS)  # exercises the code path on CPU
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "gpu_packing.json"))
    args = ap.parse_args()
    if args.dry_run_cpu:
        print(run_processes([1, 2], n=16, epochs=2, device="cpu", px=32))
        return
    if args.engine == "processes":
        if not torch.cuda.is_available():
            sys.exit("gpu_packing.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine.")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        epochs, n = (4, 256) if args.quick else (8, 512)
        rows = run_processes([int(v) for v in args.trials.split(",")], n=n, epochs=epochs)
        report(rows, args, epochs=epochs, n=n, engine="plain processes running autosub.fit (no Ray)")
        return
    preflight()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import ray
    import timm

    from autosub import MemoryBudget, discover_blocks, fit
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.searching import search
    from autosub.hpo.budget import Budget
    from autosub.hpo.space import SearchSpace

    epochs, n = (4, 256) if args.quick else (8, 512)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False).eval()
    blocks = len(discover_blocks(model))
    task = make_task(n)
    everything = tuple(range(blocks))
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    log.info("ray.init %.1fs; cluster %s", time.perf_counter() - t0, ray.cluster_resources())

    plain = fit(model, task, everything, epochs=2, batch_size=32, device="cuda", cache=False, keep_model=False)
    rows = [{"trials": "plain fit", "aggregate": plain.examples_per_s, "sum_per_trial": plain.examples_per_s,
             "per_trial": [round(plain.examples_per_s, 1)], "window_s": None}]
    log.info("plain fit (no Ray): %.0f img/s", plain.examples_per_s)
    for k in [int(v) for v in args.trials.split(",")]:
        t0 = time.perf_counter()
        res = search(model, task, Budget(trials=k, epoch_seconds=1.0), prior=None, pruner=None,
                     backend=RayBackend(resources_per_trial={"cpu": 1, "gpu": 1 / k}),
                     epochs=epochs, batch_size=32, seed=0, progress=False, device="cuda",
                     memory=MemoryBudget(gpu=0, ram=0, disk=0),
                     space=SearchSpace(min_blocks=blocks, max_blocks=blocks), run_dir=tempfile.mkdtemp(prefix="gp"))
        done = [r for r in res.records if r.state == "COMPLETE"]
        rate, window = aggregate(done, n)
        per = [float(r.user_attrs.get("examples_per_s", 0.0)) for r in done]
        rows.append({"trials": str(k), "aggregate": rate, "sum_per_trial": sum(per), "window_s": round(window, 2),
                     "per_trial": [round(p, 1) for p in per], "completed": len(done),
                     "gpu_ids": sorted({g for r in done for g in r.user_attrs.get("gpu_ids", [])}),
                     "search_wall_s": round(time.perf_counter() - t0, 1)})
        log.info("%d trial(s)/GPU: %s", k, rows[-1])
    ray.shutdown()

    report(rows, args, epochs=epochs, n=n, engine="autosub.search(backend='ray')")


def report(rows: list[dict], args, *, epochs: int, n: int, engine: str) -> None:
    """Speedups against one trial, the table, and the JSON with machine and command."""
    base = next((r["aggregate"] for r in rows if r["trials"] == "1"), None)
    base = base or next((r["sum_per_trial"] for r in rows if r["trials"] == "1"), None)
    for r in rows:  # without an overlap window (trials too short to overlap) the sum of per-trial rates stands in
        rate = r["aggregate"] or r["sum_per_trial"]
        r["speedup_vs_1"] = round(rate / base, 3) if base and rate else None
    out = {"rows": rows, "epochs": epochs, "examples_per_trial_epoch": n, "batch_size": 32, "image_size": 224,
           "engine": engine, "model": "resnet50 (all 16 blocks + head, stem frozen), bf16 autocast",
           "anchor_plain_processes_h200":
           ANCHOR, "goal": ">= 1.9x the 1-trial rate with 2-4 trials per GPU", "machine": describe_machine(),
           "command": "RAY_AUTH_MODE=disabled python " + " ".join(sys.argv)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, sort_keys=True, default=float) + "\n")

    print(f"\nGPU: {torch.cuda.get_device_name(0)}; ResNet-50, batch 32, 224 px, {epochs} epochs × {n} images/trial; "
          f"{engine}")
    print(f"{'trials/GPU':>10s} {'aggregate img/s':>16s} {'Σ per-trial':>12s} {'speedup':>8s}  per trial")
    for r in rows:
        agg = f"{r['aggregate']:.0f}" if r["aggregate"] else "n/a"
        sp = f"{r['speedup_vs_1']:.2f}x" if r["speedup_vs_1"] else "-"
        print(f"{r['trials']:>10s} {agg:>16s} {r['sum_per_trial']:12.0f} {sp:>8s}  {r['per_trial']}")
    print(f"goal: ≥ 1.9x with 2–4 trials; anchor (H200, plain processes): {ANCHOR}\nwrote {path}")


if __name__ == "__main__":
    main()
