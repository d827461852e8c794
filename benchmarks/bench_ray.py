"""Ray backend: framework overhead per trial and scaling from one to two nodes, on this machine.

Runs the same seeded 8-trial search (resnet18, untrained — speed does not depend on the weights —, 32 px
synthetic images, 2 epochs per trial, no pruning so every run does the same work) three times:

    optuna   in process, 1 torch thread
    ray 1×1  a one-node cluster with 1 CPU  (ray start --head, loopback 127.0.0.2)
    ray 2×1  a two-node cluster, 1 CPU each (ray start --head + ray start --address)

and, on each cluster, the same search with trials that first wait 3 s with the CPU idle (as trials waiting on
a GPU do): ``scaling_2_nodes_idle_cpu`` separates Ray's parallelism from this machine's core count.

    overhead_s_per_trial = (wall of ray 1×1 − wall of optuna) / trials      (cluster already running)
    scaling_2_nodes      = training window of ray 1×1 / that of ray 2×1 (first trial starts training → last ends;
                           workers' start-up, a per-search cost already in the overhead, is left out; the window
                           from the first trial asked is reported too, as ``scaling_2_nodes_incl_startup``)
    busy_share           = trial seconds / (nodes × training window): 1.0 when no node ever waits. Below it are
                           Tune's gaps between trials and the tail of 8 trials of unequal length on 2 nodes; a
                           higher ``train_s_per_trial`` on 2×1 than on 1×1 is the two trials sharing 2 cores.

It prints a table and writes ``benchmarks/results/ray_overhead.json`` with the machine and the command.
The clusters are started in their own process groups and killed by group; no other Ray is touched.

    RAY_AUTH_MODE=disabled python benchmarks/bench_ray.py            # 8 trials
    RAY_AUTH_MODE=disabled python benchmarks/bench_ray.py --quick    # 4 trials, fewer examples
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from autosub.data.task import Split, Task  # noqa: E402
from autosub.hpo.backends import RayBackend  # noqa: E402
from autosub.hpo.searching import search  # noqa: E402
from autosub.hpo.budget import Budget  # noqa: E402
from autosub.hpo.space import SearchSpace  # noqa: E402

log = logging.getLogger("bench_ray")
IP = "127.0.0.2"


def make_task(n: int, px: int, seed: int = 0) -> Task:
    """A seeded, learnable synthetic image task (the class shifts one colour channel)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 3, px, px, generator=g)
    x[:, 0] += (y.float() - 2).view(-1, 1, 1)
    k = int(n * 0.75)
    return Task(Split(x[:k], y[:k], name="train"), Split(x[k:], y[k:], name="val"), 4)


def start_cluster(nodes: int, port: int) -> tuple[str, list[int]]:
    """``nodes`` × 1-CPU Ray nodes on loopback; returns the address and the process groups to kill."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    tmp = tempfile.mkdtemp(prefix="asbench", dir="/tmp")
    address, groups = f"{IP}:{port}", []
    for i in range(nodes):
        role = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}",
                "--disable-usage-stats"] if i == 0 else [f"--address={address}"]
        p = subprocess.Popen([ray_bin, "start", f"--node-ip-address={IP}", "--num-cpus=1", *role],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        groups.append(p.pid)
        out, _ = p.communicate(timeout=180)
        if p.returncode:
            stop_cluster(groups)
            raise RuntimeError(f"ray start failed:\n{out[-2000:]}")
    return address, groups


def stop_cluster(groups: list[int]) -> None:
    import ray

    ray.shutdown()
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1.0)


PACE = 3.0
_REAL_FIT = None


def paced_fit(*args, **kwargs):
    """A trial that waits ``PACE`` s (as on a busy GPU) and then trains: pickled by value into the workers."""
    time.sleep(PACE)
    return _REAL_FIT(*args, **kwargs)


def run(model, task, trials: int, backend: str | RayBackend, *, paced: bool = False) -> dict:
    """One search; its wall time and its trial window (first trial asked → last trial finished)."""
    global _REAL_FIT
    import autosub.hpo.searching

    _REAL_FIT = autosub.hpo.searching.fit
    if paced:
        autosub.hpo.searching.fit = paced_fit
    t0 = time.perf_counter()
    try:
        res = search(model, task, Budget(trials=trials), backend=backend, prior=None, pruner=None, epochs=2, seed=0,
                     progress=False, space=SearchSpace(max_blocks=3), run_dir=tempfile.mkdtemp(prefix="asb-run"))
    finally:
        autosub.hpo.searching.fit = _REAL_FIT
    wall = time.perf_counter() - t0
    ts = [t for t in res.study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    end = max(t.datetime_complete.timestamp() for t in ts)
    window = end - min(t.datetime_start.timestamp() for t in ts)
    steady = end - min(t.user_attrs.get("started_at", t.datetime_start.timestamp()) for t in ts)
    nodes = sorted({r.user_attrs.get("node_id", "driver")[:8] for r in res.records})
    work = sum(r.seconds or 0 for r in res.records)
    return {"wall_s": round(wall, 2), "trial_window_s": round(window, 2), "training_window_s": round(steady, 2),
            "trials": len(ts), "train_s_per_trial": round(work / max(1, len(ts)), 3),
            "busy_share": round(work / (len(nodes) * steady), 3),
            "nodes": nodes, "best": [list(res.selection), round(res.score, 4)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 trials on 192 examples instead of 8 on 512")
    ap.add_argument("--pace", type=float, default=PACE, help="seconds an idle-CPU trial waits")
    ap.add_argument("--port", type=int, default=6391)
    args = ap.parse_args()
    globals()["PACE"] = args.pace
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("ray", "ray.tune", "ray.train", "autosub"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(1)  # the in-process run gets one core, like one 1-CPU Ray trial
    import timm

    trials, n = (4, 192) if args.quick else (8, 512)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    task = make_task(n, 32)
    tiny = make_task(64, 16)  # the idle-CPU trials: PACE s of waiting, a fraction of a second of training
    load0 = os.getloadavg()

    rows: dict[str, dict] = {"optuna": run(model, task, trials, "optuna")}
    log.info("optuna: %s", rows["optuna"])
    for nodes in (1, 2):
        t0 = time.perf_counter()
        address, groups = start_cluster(nodes, args.port + nodes)
        started = time.perf_counter() - t0
        try:
            ray_backend = RayBackend(address=address, resources_per_trial={"cpu": 1})
            rows[f"ray {nodes}x1"] = {**run(model, task, trials, ray_backend), "cluster_start_s": round(started, 2)}
            rows[f"ray {nodes}x1 idle"] = run(model, tiny, trials, ray_backend, paced=True)
        finally:
            stop_cluster(groups)
        log.info("ray %dx1: %s / idle-CPU trials: %s", nodes, rows[f"ray {nodes}x1"], rows[f"ray {nodes}x1 idle"])

    one, two, opt = rows["ray 1x1"], rows["ray 2x1"], rows["optuna"]
    overhead = (one["wall_s"] - opt["wall_s"]) / trials
    scaling = one["training_window_s"] / two["training_window_s"]
    scaling_all = one["trial_window_s"] / two["trial_window_s"]
    scaling_idle = rows["ray 1x1 idle"]["training_window_s"] / rows["ray 2x1 idle"]["training_window_s"]
    load1 = os.getloadavg()
    cores = os.cpu_count() or 1
    note = (f"{cores} cores, load average {load0[0]:.1f} before / {load1[0]:.1f} after: on 2×1 two CPU-bound trials, "
            "Ray's daemons and the Tune driver share these cores (train s/trial rises), and 8 trials of unequal "
            "length leave one node idle at the end (busy share); trials that wait with the CPU idle show Ray's own "
            "scaling" if cores <= 4 else f"{cores} cores")
    out = {"overhead_s_per_trial": round(overhead, 3), "scaling_2_nodes": round(scaling, 3), "trials": trials,
           "scaling_2_nodes_incl_startup": round(scaling_all, 3), "scaling_2_nodes_idle_cpu": round(scaling_idle, 3),
           "examples": n, "runs": rows, "note": note, "machine": describe_machine(),
           "command": "RAY_AUTH_MODE=disabled python " + " ".join(sys.argv)}
    path = Path(__file__).resolve().parent / "results" / "ray_overhead.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")

    print(f"\n{'run':10s} {'wall s':>8s} {'trial window s':>15s} {'training window s':>18s} {'train s/trial':>14s} "
          f"{'busy share':>11s} {'nodes':>6s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['wall_s']:8.2f} {r['trial_window_s']:15.2f} {r['training_window_s']:18.2f} "
              f"{r['train_s_per_trial']:14.3f} {r['busy_share']:11.2f} {len(r['nodes']):6d}")
    print(f"\noverhead per trial (ray 1x1 − optuna) / {trials}: {overhead:.2f} s")
    print(f"scaling 1 → 2 nodes (training window ratio):  {scaling:.2f}x  (goal ≥ 1.8); with worker start-up "
          f"{scaling_all:.2f}x")
    print(f"scaling 1 → 2 nodes, trials that wait {PACE:g} s (CPU idle, as on a GPU): {scaling_idle:.2f}x")
    print(f"note: {note}\nwrote {path}")


if __name__ == "__main__":
    main()
