"""Soak: a 60-trial search in which one trial in four fails at random — an exception, a NaN loss, or a SIGKILL of
the driver (its only worker), which is then resumed — finishing with every successful trial recorded.

The driver is a subprocess (``--driver``) running ``autosub.search`` (Optuna backend, ``resume=True`` after the
first start) on a tiny real task (timm ``test_resnet``, sklearn digits at 16 px, one epoch per trial). Each
trial draws its fate from a seeded RNG: 3/4 run normally, 1/12 raise, 1/12 produce NaN logits (caught by ``fit``
as ``TrainingDiverged``), 1/12 SIGKILL the driver after their epoch. The parent restarts the driver until the
search returns, then checks the study (Optuna's public API) against the log the drivers kept of every trial they
saw finish (``after`` callbacks, flushed at once):

* ``lost``: trials a driver saw COMPLETE that the final study does not hold COMPLETE with the same values;
* ``duplicated``: trials trained to COMPLETE twice (a retry of a trial that had completed, or two trained
  COMPLETE trials with the same parameters).

Writes ``benchmarks/results/soak.json`` (machine, exact command, counts, seconds) and prints a table.

    python benchmarks/soak.py                   # 60 trials, seed 0
    python benchmarks/soak.py --trials 20       # shorter
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAULTS = ("exception", "nan", "kill")


def driver(run_dir: Path, trials: int, seed: int, start: int) -> None:
    """One driver process: the search, with faults injected into its trials (SIGKILL included)."""
    import copy

    import timm
    import torch

    import autosub.hpo.searching as S
    from autosub.data.datasets import digits
    from autosub.data.task import Split, Task

    log = open(run_dir / "events.jsonl", "a", buffering=1)

    def event(**kw) -> None:
        log.write(json.dumps({"pid": os.getpid(), "start": start, **kw}) + "\n")
        log.flush()
        os.fsync(log.fileno())

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    t = digits(model=model, image_size=16, samples_per_class=6)
    task = Task(train=t.train, val=Split(t.val.inputs[:60], t.val.targets[:60], name="val"),
                num_classes=t.num_classes)
    rng = random.Random(f"{seed}-{start}")  # another draw sequence at every start: a kill never repeats forever
    real_fit = S.fit

    def fit(net, data, selection, *a, callback=None, **k):
        if callback is None:  # the final model (no per-epoch hook): never faulted
            return real_fit(net, data, selection, *a, callback=callback, **k)
        fate = rng.random()
        kind = None if fate >= 0.25 else FAULTS[min(2, int(fate / (0.25 / 3)))]
        event(fit=list(selection), fault=kind)
        if kind == "exception":
            raise RuntimeError("injected fault: a bug in the training step")
        if kind == "nan":
            net = copy.deepcopy(net)
            net.register_forward_hook(lambda mod, inp, out: out * float("nan"))
        if kind == "kill":
            def dying(epoch, score):
                callback(epoch, score)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_fit(net, data, selection, *a, callback=dying, **k)
        return real_fit(net, data, selection, *a, callback=callback, **k)

    S.fit = fit
    seen = lambda rec, _model: event(number=rec.number, state=rec.state, values=rec.values)  # noqa: E731
    res = S.search(model, task, trials, selector="random", prior=None, epochs=1, seed=seed, resume=start > 0,
                   run={"run_dir": str(run_dir), "study_name": "soak", "progress": False, "callbacks": [seen]})
    event(finished=True, spent=res.spent["trials"])


def check(run_dir: Path) -> dict:
    """Compare the final study with what the drivers saw; count faults, kills, losses and duplicates."""
    import optuna

    from autosub.hpo.engines import open_storage

    storage, _ = open_storage(None, run_dir)  # the drivers' default storage: the run directory's study
    trials = optuna.load_study(study_name="soak", storage=storage).get_trials()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    by_number = {t.number: t for t in trials}
    seen_complete = {e["number"]: e["values"] for e in events if e.get("state") == "COMPLETE"}
    lost = [n for n, v in seen_complete.items() if by_number[n].state.name != "COMPLETE" or by_number[n].values != v]
    trained = [t for t in trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    keys = [tuple(sorted(t.params.items())) for t in trained]
    retried_complete = [t.number for t in trials if t.user_attrs.get("retry_of") is not None
                        and by_number[t.user_attrs["retry_of"]].state.name == "COMPLETE"]
    faults = [e["fault"] for e in events if "fit" in e and e["fault"]]
    counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("unrun")
               and not (t.state.name == "FAIL" and any(u.user_attrs.get("retry_of") == t.number for u in trials))]
    reasons = [t.user_attrs.get("fail_reason") or "" for t in trials if t.state.name == "FAIL"]
    return {"trials_total": len(counted), "trials_in_study": len(trials),
            "trials_failed_injected": faults.count("exception") + faults.count("nan"),
            "faults": {k: faults.count(k) for k in FAULTS},
            "trials_complete": sum(t.state.name == "COMPLETE" for t in trials),
            "trials_failed": sum(t.state.name == "FAIL" for t in trials),
            "fail_reasons": {"exception": sum("injected fault" in r for r in reasons),
                             "nan": sum("Diverged" in r or "became nan" in r.lower() for r in reasons)},
            "lost_trials_failed_with_reason": sum(1 for t in trials if t.state.name == "FAIL"
                                                  and any(u.user_attrs.get("retry_of") == t.number for u in trials)),
            "waiting_or_running_left": sum(t.state.name in ("WAITING", "RUNNING") for t in trials),
            "lost": len(lost), "duplicated": (len(keys) - len(set(keys))) + len(retried_complete)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "soak.json"))
    ap.add_argument("--driver", nargs=2, metavar=("RUN_DIR", "START"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        driver(Path(args.driver[0]), args.trials, args.seed, int(args.driver[1]))
        return 0
    sys.path.insert(0, str(HERE))
    from machine import describe_machine

    run_dir = Path(tempfile.mkdtemp(prefix="autosub-soak-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    t0, kills, resumes, start = time.perf_counter(), 0, 0, 0
    while True:
        proc = subprocess.run([sys.executable, __file__, "--trials", str(args.trials), "--seed", str(args.seed),
                               "--driver", str(run_dir), str(start)], env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        if proc.returncode != -signal.SIGKILL:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        kills += 1
        resumes += 1
        start += 1
        if start > 100:
            print("more than 100 restarts; giving up", file=sys.stderr)
            return 1
    result = {**check(run_dir), "kills": kills, "resumes": resumes, "seconds": round(time.perf_counter() - t0, 1),
              "machine": describe_machine(), "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
              "trials_budget": args.trials, "seed": args.seed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    keys = ("trials_total", "trials_failed_injected", "trials_complete", "kills", "resumes", "lost", "duplicated",
            "seconds")
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| " +
          " | ".join(str(result[k]) for k in keys) + " |")
    return 0 if result["lost"] == 0 and result["duplicated"] == 0 and result["trials_total"] == args.trials else 2


if __name__ == "__main__":
    sys.exit(main())
