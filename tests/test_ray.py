"""backend="ray": same SearchResult as Optuna, a real two-node loopback cluster, retries, driver SIGKILL + restore.

One two-node cluster (``ray start --head`` + ``ray start --address``, both on 127.0.0.2, 1 CPU each) serves the
whole module; its processes are started in their own sessions and killed by process group at teardown, so no
other Ray on the machine is touched.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(find_spec("ray") is None, reason="needs ray: pip install 'autosub[ray]'")

HERE = Path(__file__).resolve().parent
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
SMALL = {"epochs": 2, "prior": None, "progress": False, "seed": 0}


def _free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.2", port)) != 0:
                return port
    raise RuntimeError("no free port")


@pytest.fixture(scope="module")
def cluster():
    """A real two-node Ray cluster on 127.0.0.2 (1 CPU per node); yields its address, kills only its processes."""
    import ray

    ray_bin = str(Path(sys.executable).parent / "ray")
    tmp = tempfile.mkdtemp(prefix="asray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **ENV, "PYTHONPATH": path}  # the cluster and the driver scripts import this checkout
    port, client_port = _free_port(6391), _free_port(26001)  # not 23000-23999: Ray Client's per-client servers
    address = f"127.0.0.2:{port}"
    head = ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats",
            f"--ray-client-server-port={client_port}",
            f"--dashboard-agent-listen-port={_free_port(52365)}", f"--min-worker-port={_free_port(20000)}",
            "--max-worker-port=20999"]
    pgids = []
    try:
        for extra in (head, [f"--address={address}", f"--min-worker-port={_free_port(21000)}",
                             "--max-worker-port=21999"]):
            p = subprocess.Popen([ray_bin, "start", "--node-ip-address=127.0.0.2", "--num-cpus=1", *extra], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            pgids.append(p.pid)  # its own session: every process of this node (raylet, workers) is in group p.pid
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, out[-3000:]
        old = {k: os.environ.get(k) for k in (*ENV, "RAY_ADDRESS")}
        os.environ.update({**ENV, "RAY_ADDRESS": address})
        yield {"address": address, "client": f"ray://127.0.0.2:{client_port}", "env": {**env, "RAY_ADDRESS": address}}
        ray.shutdown()
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    finally:
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False).eval()


@pytest.fixture(scope="module")
def task():
    from conftest import make_image_task
    from autosub.data.task import Split, Task

    t = make_image_task(n=96, px=16)
    return Task(t.train, Split(t.val.inputs[:12], t.val.targets[:12], name="val"), t.num_classes,
                test=Split(t.val.inputs[12:], t.val.targets[12:], name="test"))


@pytest.fixture(scope="module")
def ray_result(cluster, model, task, tmp_path_factory):
    """One search on the two-node cluster through address="auto"."""
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.searching import search
    from autosub.hpo.space import SearchSpace

    run_dir = tmp_path_factory.mktemp("ray-run")
    res = search(model, task, 6, backend=RayBackend(address="auto", resources_per_trial={"cpu": 1}), run_dir=run_dir,
                 space=SearchSpace(max_blocks=2), **SMALL)
    return res, run_dir


# ------------------------------------------------------------------------------------------------ results
def test_ray_search_returns_the_same_result_as_the_optuna_backend(ray_result, model, task, tmp_path):
    from autosub.hpo.result import SearchResult
    from autosub.hpo.searching import search
    from autosub.hpo.space import SearchSpace

    res, run_dir = ray_result
    ref = search(model, task, 6, run_dir=tmp_path, space=SearchSpace(max_blocks=2), **SMALL)
    assert isinstance(res, SearchResult) and res.config["backend"] == "ray"
    assert list(res.trials.columns) == list(ref.trials.columns)
    assert set(res.spent) == set(ref.spent) and res.spent["stop_reason"].startswith("trials")
    assert res.storage == str((run_dir / "study.journal").resolve()) and (run_dir / "study.journal").exists()
    done = [r for r in res.records if r.state == "COMPLETE"]
    assert len([r for r in res.records if r.state in ("COMPLETE", "PRUNED")]) == 6 and done
    assert res.score == max(r.values[0] for r in done) and 1 <= len(res.selection) <= 2
    assert res.test_score is not None and 0.0 <= res.test_score <= 1.0
    assert res.model(task.val.inputs[:3]).shape == (3, task.num_classes)
    assert set(res.state) <= set(ref.model.state_dict())  # the tuned tensors of the final model
    mine, theirs = {r.number: r for r in res.records}, {r.number: r for r in ref.records}
    assert all(mine[n].params == theirs[n].params for n in mine)  # the same seeded proposals, in the same order
    for n in mine:  # ... and the same scores (ASHA and Optuna's pruner may stop different trials)
        if mine[n].state == theirs[n].state == "COMPLETE":
            assert mine[n].values == pytest.approx(theirs[n].values)
    for r in res.records:  # same record fields as in-process, plus where each ran
        assert {"selection", "proposed_by", "trainable_params"} <= set(r.user_attrs)
        assert {"node_id", "node_ip", "pid"} <= set(r.user_attrs) and r.user_attrs["node_ip"] == "127.0.0.2"
        if r.state == "PRUNED":  # stopped by ASHA after epoch 1 of 2
            assert list(r.intermediate) == [1]


def test_trials_ran_on_both_nodes_of_the_cluster(ray_result):
    import ray

    res, _ = ray_result
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    used = {r.user_attrs["node_id"] for r in res.records}
    assert len(alive) == 2 and used == alive


def test_checkpoints_hold_the_tuned_tensors_and_optimizer_state_not_the_model(ray_result, model):
    from autosub.training.checkpoint import FitState
    from autosub.hpo.engines.ray import load_tuned

    res, run_dir = ray_result
    state = load_tuned(run_dir / "ray", res.best_trial)
    saved = FitState.load(max((run_dir / "ray").glob(f"*/trial_{res.best_trial:05d}_*/checkpoint_*")))  # the last
    assert saved.epoch == 2 and saved.optimizer["state"]  # resumable: AdamW moments, schedule, RNG
    assert {k: v.shape for k, v in saved.tensors.items()} == {k: v.shape for k, v in state.items()}
    assert state is not None and {"fc.weight", "fc.bias"} <= set(state) and set(state) == set(res.state)
    assert not any(k.startswith(("conv1.", "bn1.")) for k in state)  # the frozen stem is not in the checkpoint
    assert sum(v.numel() for v in state.values()) < sum(v.numel() for v in model.state_dict().values())
    for name, tensor in state.items():  # the final model is the best trial's checkpoint, not a refit
        assert torch.equal(tensor, res.state[name]), name


# ----------------------------------------------------------------------------------------- fault tolerance
DRIVER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {tests!r})
    import timm, torch
    import autosub.hpo.searching
    from conftest import make_image_task
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.searching import search
    from autosub.hpo.space import SearchSpace

    real = autosub.hpo.searching.fit  # the trainer search() hands its trials (and Ray pickles with them)
    def paced(*args, **kwargs):  # slow trials down so the kill lands mid-search; one worker dies mid-trial
        time.sleep(1.5)
        save = kwargs.get("checkpoint")
        if save is None:
            return real(*args, **kwargs)
        def die_once_in_epoch_2(state):  # the first trial to reach epoch 2 loses its worker (as after an OOM kill);
            if state.epoch >= 2:         # Tune runs epoch 2 only after it saved epoch 1's checkpoint, and a trial
                try:                     # ASHA stopped after epoch 1 never gets here
                    os.close(os.open({marker!r}, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os._exit(1)
            save(state)
        return real(*args, **{{**kwargs, "checkpoint": die_once_in_epoch_2}})
    autosub.hpo.searching.fit = paced
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    res = search(model, make_image_task(n=64, px=16), 8, backend=RayBackend(address="auto", max_failures=1),
                 run_dir={run_dir!r}, resume=sys.argv[1] == "resume", space=SearchSpace(max_blocks=2), epochs=2,
                 prior=None, progress=False, seed=0)
    print("RESULT " + json.dumps({{"stop": res.spent["stop_reason"], "selection": list(res.selection)}}))
""")


def _finished(run_dir: Path) -> dict[int, tuple[str, float | None]]:
    """Finished trials of the run's study, read while the driver writes it: number -> (state, value)."""
    from _faults import trials_of

    return {t.number: (t.state.name, t.value) for t in trials_of(run_dir, "autosub") if t.state.is_finished()}


def _resumed(run_dir: Path) -> list[int]:
    """Trials recorded as resumed from a checkpoint (their worker died mid-trial)."""
    from _faults import trials_of

    return [t.number for t in trials_of(run_dir, "autosub") if "resumed_from_epoch" in t.user_attrs]


def test_a_dead_worker_is_retried_and_a_killed_driver_resumes_losing_no_finished_trial(cluster, tmp_path):
    script = tmp_path / "driver.py"
    marker = tmp_path / "crashed-once"
    script.write_text(DRIVER.format(tests=str(HERE), run_dir=str(tmp_path / "run"), marker=str(marker)))
    db = tmp_path / "run"  # the run directory: its study is read with Optuna's API while the driver writes it
    env = {**cluster["env"], "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, str(script), "new"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 150
    while time.time() < deadline and first.poll() is None:
        if len(_finished(db)) >= 2 and _resumed(db):  # the dead worker's trial resumed and finished
            break
        time.sleep(0.3)
    assert first.poll() is None, ("the driver ended before it could be killed (did the dead worker's trial resume?):\n"
                                  + first.stdout.read()[-3000:])
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = _finished(db)
    assert 2 <= len(before) < 8, before  # the kill landed mid-search

    second = subprocess.run([sys.executable, str(script), "resume"], env=env, capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = json.loads(next(line[7:] for line in second.stdout.splitlines() if line.startswith("RESULT ")))
    after = _finished(db)
    assert all(after[n] == v for n, v in before.items())  # every trial finished before the kill is kept as it was
    ran = [n for n, (s, _) in after.items() if s in ("COMPLETE", "PRUNED")]
    assert len(ran) == 8 and out["stop"].startswith("trials")  # ... and the search completed its budget
    from _faults import study_of

    from autosub.hpo.engines._study import FAIL_KEY

    study = study_of(db, "autosub")
    trials = study.trials
    failed = [t.user_attrs.get("fail_reason") or study.user_attrs.get(f"{FAIL_KEY}{t.number}", "")  # lost: by number
              for t in trials if t.state.name == "FAIL"]
    assert marker.exists() and all(r.startswith("lost") for r in failed)  # the dead worker's trial was retried ...
    resumed = [t for t in trials if t.user_attrs.get("resumed_from_epoch")]
    table = [(t.number, t.state.name, t.user_attrs.get("fail_reason"), t.user_attrs.get("retry_of"),
              t.user_attrs.get("resumed_from_epoch")) for t in trials]
    assert len(resumed) == 1 and resumed[0].user_attrs["resumed_from_epoch"] == 1, (table, before)  # ... from epoch 1
    assert resumed[0].state.name == "COMPLETE" and len(resumed[0].user_attrs["curve"]) == 2
    assert os.listdir(tmp_path / "run" / "ray") == ["autosub"]  # the same Tune experiment, restored


FAULTS = textwrap.dedent("""
    import json, os, signal, sys, time
    sys.path.insert(0, {tests!r})
    import timm, torch
    import autosub.hpo.searching as S
    import autosub.selection.profiling as P
    from conftest import make_image_task
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.space import SearchSpace

    point, mode, run_dir, marks = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    DRIVER = os.getpid()

    def die():
        sys.stdout.flush()
        os.kill(DRIVER, signal.SIGKILL)
        time.sleep(60)  # a worker that killed the driver: Ray ends it with the driver's job

    callbacks, profiles = [], []
    if mode == "new" and point == "prior":  # during the profile, after its second entry was checkpointed
        real_put = P._Checkpoint.put
        def put(self, entries, epochs):
            real_put(self, entries, epochs)
            if len(self.entries) == 2:
                die()
        P._Checkpoint.put = put
    elif mode == "new" and point == "mid-trial":  # the second trial to finish epoch 1 kills the driver from its
        real_fit = S.fit                          # worker, with trials running (Ray ships this function there)
        def fit(*a, checkpoint=None, **k):
            def save(state):  # before the epoch is reported (ASHA may stop a trial at its report)
                if state.epoch == 1:
                    n = 0
                    while True:
                        try:
                            os.close(os.open(os.path.join(marks, str(n)), os.O_CREAT | os.O_EXCL))
                            break
                        except FileExistsError:
                            n += 1
                    if n == 1:
                        die()
                checkpoint(state)
            return real_fit(*a, checkpoint=save if checkpoint is not None else None, **k)
        S.fit = fit
    elif mode == "new" and point == "between":  # on the driver, after the second trial was told to the study
        seen = []
        callbacks = [lambda rec, model: rec.user_attrs.get("known") or (seen.append(rec.number), len(seen) == 2
                                                                         and die())]
    if mode == "resume":  # record the resumed profile's work, and the same profile uninterrupted
        real_profile = S.run_profile
        def spy(*a, **k):
            prof = real_profile(*a, **k)
            whole = real_profile(*a, **{{**k, "checkpoint": None}})
            profiles.append({{"n_fits": prof.n_fits, "reused": prof.config["reused"], "ranking": prof.ranking(),
                              "whole_n_fits": whole.n_fits, "whole_ranking": whole.ranking(),
                              "same_scores": [e.scores for e in prof.entries] == [e.scores for e in whole.entries]}})
            return prof
        S.run_profile = spy
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    res = S.search(model, make_image_task(n=48, px=16), {budget}, backend=RayBackend(address="auto",
                   resources_per_trial={{"cpu": 1}}), resume=mode == "resume", space=SearchSpace(max_blocks=2),
                   epochs=2, seed=0, run={{"run_dir": run_dir, "progress": False, "callbacks": callbacks}})
    print("RESULT " + json.dumps({{"stop": res.spent["stop_reason"], "trials": res.spent["trials"],
                                  "prior": res.prior, "profiles": profiles}}))
""")
RAY_BUDGET = 4


def _fault_driver(point: str, cluster, tmp_path: Path):
    """``drive(mode)``: run the FAULTS driver script (killed at ``point`` when ``mode`` is "new"); and its run_dir."""
    script, run_dir, marks = tmp_path / "faults.py", tmp_path / "run", tmp_path / "marks"
    marks.mkdir()
    script.write_text(FAULTS.format(tests=str(HERE), budget=RAY_BUDGET))
    env = {**cluster["env"], "PYTHONUNBUFFERED": "1"}

    def drive(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), point, mode, str(run_dir), str(marks)], env=env,
                              capture_output=True, text=True, timeout=300)

    return drive, run_dir


@pytest.mark.parametrize("point", ["prior", "mid-trial", "between"])
def test_a_ray_driver_killed_at_any_point_resumes_and_finishes_its_original_budget(point, cluster, tmp_path):
    from _faults import check_resumed, study_of

    drive, run_dir = _fault_driver(point, cluster, tmp_path)
    first = drive("new")
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:] + first.stderr[-3000:]
    study = study_of(run_dir, "autosub")
    assert study is not None
    before = study.get_trials(deepcopy=False)
    prior_before = study.user_attrs.get("autosub", {}).get("prior")
    if point == "prior":
        assert prior_before is None and not before
        assert len(json.loads((run_dir / "prior-autosub.partial.json").read_text())["entries"]) == 2
    else:
        assert prior_before  # recorded before the kill
        if point == "between":
            assert len([t for t in before if t.state.is_finished() and not t.user_attrs.get("known")]) >= 2
        else:  # killed from a worker, with its trial running
            assert [t for t in before if t.state.name == "RUNNING"]

    second = drive("resume")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = json.loads(next(line[7:] for line in second.stdout.splitlines() if line.startswith("RESULT ")))
    check_resumed(before, study_of(run_dir, "autosub"), RAY_BUDGET)
    assert out["trials"] == RAY_BUDGET and out["stop"].startswith("trials"), out
    if point == "prior":  # the two finished entries reused, the rest trained; the same ranking as uninterrupted
        (prof,) = out["profiles"]
        assert prof["reused"] == 2 and prof["n_fits"] == prof["whole_n_fits"] - 2, prof
        assert prof["ranking"] == prof["whole_ranking"] and prof["same_scores"], prof
        assert not (run_dir / "prior-autosub.partial.json").exists()
    else:  # the prior the dead driver computed, not a new one
        assert out["profiles"] == [] and out["prior"] == prior_before


def test_a_trial_the_restored_snapshot_knew_but_tune_never_ran_again_is_retried_in_a_follow_up_experiment(
        cluster, tmp_path):
    """The two restore races made deterministic. (1) The searcher's saved state maps a Tune trial id that Tune's
    snapshot does not hold to a trial the study has RUNNING, so Tune's restore never runs it again. It must not
    stay RUNNING: it is failed when the restored experiment ends and its retry runs in a second experiment.
    (2) The driver died between ``study.ask()`` and the end of the trial's label (one parameter sampled, no
    experiment recorded; CI once left such a trial RUNNING and its budget share unspent): the restored searcher
    fails it and its retry runs."""
    import optuna
    from _faults import check_resumed, study_of

    from autosub.hpo.engines._study import FAIL_KEY

    drive, run_dir = _fault_driver("between", cluster, tmp_path)
    first = drive("new")
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:] + first.stderr[-3000:]
    study = study_of(run_dir, "autosub")
    experiment = study.user_attrs["autosub_ray"]["experiment"]
    model = next(t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
                 and not t.user_attrs.get("known"))
    lr = model.distributions["lr"]
    other = (lr.low * lr.high) ** 0.5 if model.params["lr"] != (lr.low * lr.high) ** 0.5 else lr.low
    study.enqueue_trial({**model.params, "lr": other})  # a configuration not run yet ...
    orphan = study.ask()  # ... that the dead driver had started (and suggested, as every autosub trial is)
    for name, dist in model.distributions.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            orphan.suggest_categorical(name, dist.choices)
        else:
            orphan.suggest_float(name, dist.low, dist.high, log=dist.log)
    for k in ("selection", "n_blocks", "proposed_by", "pid", "host", "started_at"):
        orphan.set_user_attr(k, model.user_attrs[k])
    orphan.set_user_attr("ray_experiment", experiment)
    saved = sorted((run_dir / "ray" / experiment).glob("searcher-state-*.pkl"))
    assert saved, "Tune saved no searcher state"
    state = json.loads(saved[-1].read_text())  # autosub's searcher state is JSON (whatever Tune names the file)
    state["numbers"]["never-in-tunes-snapshot"] = orphan.number
    saved[-1].write_text(json.dumps(state))
    cut_off = study.ask()  # asked by the dead driver, which was killed while labelling it
    cut_off.suggest_float("lr", lr.low, lr.high, log=lr.log)
    cut_off.set_user_attr("pid", model.user_attrs["pid"])
    before = study.get_trials(deepcopy=False)

    second = drive("resume")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = json.loads(next(line[7:] for line in second.stdout.splitlines() if line.startswith("RESULT ")))
    after = study_of(run_dir, "autosub")
    check_resumed(before, after, RAY_BUDGET)  # the orphan: failed with a "lost" reason, run again once
    assert "did not run it again" in after.user_attrs[f"{FAIL_KEY}{orphan.number}"]
    assert "while it asked for this trial" in after.user_attrs[f"{FAIL_KEY}{cut_off.number}"]
    assert after.user_attrs["autosub_ray"] == {"experiment": f"{experiment}-2", "finished": True, "runs": 2}
    assert out["trials"] == RAY_BUDGET and out["stop"].startswith("trials"), out


CLIENT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import timm, torch
    from conftest import make_image_task
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.searching import search
    from autosub.hpo.space import SearchSpace
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    res = search(model, make_image_task(n=64, px=16), 4, backend=RayBackend(address={address!r}), run_dir={run_dir!r},
                 space=SearchSpace(max_blocks=2), epochs=2, prior=None, progress=False, seed=0)
    print("RESULT " + json.dumps({{"stop": res.spent["stop_reason"], "backend": res.config["backend"],
                                  "states": [r.state for r in res.records], "driver": os.getpid(),
                                  "where": [[r.user_attrs["node_ip"], r.user_attrs["pid"]] for r in res.records],
                                  "score": res.score}}))
""")


def test_a_search_through_ray_client_runs_on_the_cluster(cluster, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT.format(tests=str(HERE), address=cluster["client"], run_dir=str(tmp_path / "run")))
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_ADDRESS"}  # only the ray:// address reaches it
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
    assert out["backend"] == "ray" and out["stop"].startswith("trials (4/4)"), out
    assert len(out["states"]) == 4 and set(out["states"]) <= {"COMPLETE", "PRUNED"} and out["score"] > 0, out
    assert all(ip == "127.0.0.2" and pid != out["driver"] for ip, pid in out["where"]), out  # ran on the cluster
    assert (tmp_path / "run" / "study.journal").exists()  # the Tune loop ran on the head, with the study here


def test_ray_client_session_failures_are_retried_and_other_errors_fail_at_once(monkeypatch):
    import ray

    from autosub.hpo.engines import ray as engine
    from autosub.errors import SearchAborted

    calls = []

    def init(address, **kw):
        calls.append(address)
        if len(calls) == 1:
            raise ConnectionAbortedError("Initialization failure from server")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(engine.time, "sleep", lambda s: None)
    monkeypatch.setattr(ray.util.client.ray, "is_connected", lambda: True)
    assert engine.connect("ray://127.0.0.2:1") is True and calls == ["ray://127.0.0.2:1"] * 2

    def timeout(address, **kw):
        calls.append(address)
        raise ConnectionError("ray client connection timeout")

    calls.clear()
    monkeypatch.setattr(ray, "init", timeout)
    with pytest.raises(SearchAborted, match="Cannot join the Ray cluster at 'ray://127.0.0.2:1'"):
        engine.connect("ray://127.0.0.2:1")
    assert len(calls) == 1  # a wrong address is not retried


# ---------------------------------------------------------------------------------------- optional extra
def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_import_autosub_does_not_import_ray():
    p = _python("""
        import sys, autosub, autosub.hpo.searching, autosub.hpo.engines, autosub.hpo.engines.optuna
        from autosub.hpo.backends import RayBackend, resolve_backend
        resolve_backend("optuna"), RayBackend(address="auto")
        assert autosub.hpo.searching and "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
    """)
    assert p.returncode == 0, p.stderr


def test_a_trial_that_fits_no_node_fails_before_any_work(cluster, model, task, tmp_path):
    from autosub.errors import ConfigError
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.searching import search

    for cap in (None, 1):  # a given max_concurrent_trials does not skip the check
        with pytest.raises(ConfigError, match="No trial fits the Ray cluster"):
            search(model, task, 2, backend=RayBackend(address="auto", resources_per_trial={"cpu": 1, "gpu": 0.5},
                                                      max_concurrent_trials=cap), run_dir=tmp_path, **SMALL)
    assert not (tmp_path / "ray").exists()  # nothing ran


def test_max_concurrent_trials_reaches_tune_and_an_optuna_pruner_gives_way_to_asha(cluster, model, task, tmp_path,
                                                                                   monkeypatch, caplog):
    import logging

    import optuna
    from ray import tune

    from autosub.hpo.backends import RayBackend
    from autosub.hpo.searching import search

    configs, real = [], tune.TuneConfig

    def spy(**kw):
        configs.append(kw)
        return real(**kw)

    monkeypatch.setattr(tune, "TuneConfig", spy)
    with caplog.at_level(logging.WARNING, logger="autosub"):
        res = search(model, task, 2, backend=RayBackend(address="auto", max_concurrent_trials=1),
                     pruner=optuna.pruners.MedianPruner(), run_dir=tmp_path, **SMALL)
    assert [c["max_concurrent_trials"] for c in configs] == [1] and configs[0]["num_samples"] == 2
    assert isinstance(configs[0]["scheduler"], tune.schedulers.ASHAScheduler)
    assert "ASHA" in caplog.text and "MedianPruner" in caplog.text
    assert len([r for r in res.records if r.state in ("COMPLETE", "PRUNED")]) == 2


# --------------------------------------------------------------------------- the searcher, without a cluster
def _searcher(tmp_path, experiment="e", *, trials=3, fuse_trials=0, slots=1):
    import optuna

    from autosub.hpo.budget import Budget, Meter
    from autosub.hpo.engines import Job, StudyStore, TrialOutcome
    from autosub.hpo.engines.ray_search import SelectorSearcher
    from autosub.hpo.selectors import RandomSelector, SelectorContext
    from autosub.hpo.space import SearchSpace

    tmp_path.mkdir(parents=True, exist_ok=True)
    bound = SearchSpace(max_blocks=2).bind([100] * 4)
    ctx = SelectorContext(space=bound, seed=0, epochs=2)
    job = Job(space=bound, selector=RandomSelector(), context=ctx, run_trial=lambda *a, **k: TrialOutcome([0.0], {}),
              budget=Budget(trials=trials), meter=Meter(1.0), objectives=("score",), progress=False)
    store = StudyStore(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", run_dir=tmp_path,
                       resume=(tmp_path / "s.db").exists(), directions=["maximize"])
    book = store.open(job, sampler=job.selector.sampler(ctx), pruner=optuna.pruners.NopPruner())
    return SelectorSearcher(key=str(tmp_path), book=book, budget=job.budget, meter=job.meter, experiment=experiment,
                            fuse_trials=fuse_trials, slots=slots)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_searcher_saves_json_and_after_a_restore_settles_the_trials_the_dead_driver_held(tmp_path):
    from autosub.errors import SearchAborted
    from autosub.hpo.engines.ray_search import settle_not_rerun, started

    first = _searcher(tmp_path)
    a, b = first.suggest("tune-a"), first.suggest("tune-b")  # two trials run ...
    first.on_trial_result("tune-a", {"epoch": 1, "score": 0.4, "final": False})
    first.save(str(tmp_path / "searcher.json"))  # ... Tune snapshots the searcher ...
    first.suggest("tune-c")  # ... one more starts, then the driver dies with all three running
    state = json.loads((tmp_path / "searcher.json").read_text())  # JSON, never a pickle
    assert state["numbers"] == {"tune-a": [a["number"]], "tune-b": [b["number"]]}

    second = _searcher(tmp_path)
    second.restore(str(tmp_path / "searcher.json"))
    second.on_trial_complete("tune-a", {"final": True, "values": [0.7], "score": 0.7, "epoch": 2,
                                        "attrs": json.dumps({"curve": [0.4, 0.7], "resumed_from_epoch": 1})})
    records = second.book.records()
    lost = {r.number: r.user_attrs["fail_reason"] for r in records if r.state == "FAIL"}
    assert set(lost) == {a["number"], 2} and all(v.startswith("lost") for v in lost.values())
    done = [r for r in records if r.state == "COMPLETE"]
    assert len(done) == 1 and done[0].retry_of == a["number"] and done[0].values == [0.7]  # Tune continued it
    assert done[0].intermediate == {1: 0.4} and done[0].user_attrs["resumed_from_epoch"] == 1  # nothing lost
    retries = [r for r in records if r.state == "WAITING"]
    assert [r.retry_of for r in retries] == [2]  # Tune's snapshot never knew trial 2: re-enqueued
    assert records[b["number"]].state == "RUNNING" and second.continued == {b["number"]: {}}  # Tune still runs it
    assert started(records, "e") == 2  # trial 1 (running) and trial 0's run; the lost ones do not count
    second.on_trial_complete("tune-a", {"final": True, "values": [0.7], "score": 0.7, "epoch": 2, "number": 0})
    assert len(second.book.records()) == len(records)  # replayed: nothing recorded twice

    # the restored experiment ends and Tune never ran trial b again: it is failed and retried, not left RUNNING
    assert settle_not_rerun(second.book, "other-experiment") == []  # another experiment's trials are not touched
    assert settle_not_rerun(second.book, "e") == [b["number"]]
    after = second.book.records()
    assert after[b["number"]].state == "FAIL" and "did not run it again" in after[b["number"]].user_attrs["fail_reason"]
    assert sorted(r.retry_of for r in after if r.state == "WAITING") == sorted([2, b["number"]])
    assert b["number"] not in second.book.continuing and settle_not_rerun(second.book, "e") == []  # once

    import pickle

    (tmp_path / "pickled").write_bytes(pickle.dumps({"numbers": {}}))  # the old format: refused, never loaded
    with pytest.raises(SearchAborted, match="not the JSON"):
        _searcher(tmp_path).restore(str(tmp_path / "pickled"))


# ---------------------------------------------------------------------------------------------- security
def test_a_local_ray_started_by_autosub_binds_loopback_where_ray_allows_and_keeps_token_auth_on():
    """What is true on Ray 2.60: the node address is loopback (127.0.0.2) and the runtime-env agent listens there;
    the GCS, the raylet and the workers listen on every interface (they take no bind address), so token
    authentication stays on. No Ray process listens on the machine's external address alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(
        p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p))
    code = textwrap.dedent("""
        import json, os, ray
        import psutil  # Ray ships it (ray/thirdparty_files, on sys.path once ray is imported)
        from autosub.hpo.engines.ray import connect
        connect("local")
        ray.get(ray.remote(lambda: 1).remote())  # a worker process runs too
        names = {p.pid: p.name() for p in psutil.Process().children(recursive=True)}
        socks = sorted((names[c.pid], c.laddr.ip) for c in psutil.net_connections(kind="inet")
                       if c.status == psutil.CONN_LISTEN and c.pid in names)
        print(json.dumps({"auth": os.environ.get("RAY_AUTH_MODE"), "node_ip": ray.util.get_node_ip_address(),
                          "sockets": socks}))
        ray.shutdown()
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["auth"] == "token" and got["node_ip"] == "127.0.0.2"
    socks = [tuple(s) for s in got["sockets"]]
    assert socks, "no listening socket of a Ray process was found"
    wildcard = {ip for _, ip in socks} - {"127.0.0.2"}
    assert wildcard <= {"0.0.0.0", "::"}, socks  # loopback, or a wildcard Ray cannot narrow; nothing else
    assert ("ray::RuntimeEnvAgent", "127.0.0.2") in socks or any(ip == "127.0.0.2" for _, ip in socks)
    on_all = {name for name, ip in socks if ip in ("0.0.0.0", "::")}
    assert on_all <= {"gcs_server", "raylet"} | {n for n in on_all if n.startswith("ray::")}, on_all


# ------------------------------------------------------------------ fused groups: one Tune trial, K study trials
def _group_payload(oracle, *, memory=None):
    """What search() hands a fused Ray search's workers: run_trial (one trial alone) and its SearchGroups."""
    from autosub.hpo.engines import TrialOutcome
    from autosub.hpo.fusing import SearchGroups
    from autosub.model.blocks import discover_blocks
    from autosub.model.subtune import tuned_tensors
    from autosub.training.fused import FusedGroup
    from autosub.training.trainer import fit

    model, task = oracle
    part = discover_blocks(model)

    def train(cand, report=None, **_):
        return fit(model, task, cand.selection, lr=cand.lr, weight_decay=cand.weight_decay, epochs=2, batch_size=32,
                   seed=0, cache=False, keep_model=True, callback=report)

    def to_outcome(res):
        return TrialOutcome([float(res.score)], {"curve": res.curve}, res.model)

    groups = SearchGroups(lambda share: FusedGroup(model, task, batch_size=32, cache=False, memory=memory, seed=0,
                                                   keep_models=True),
                          to_outcome, epochs=2, seed=0, max_trials=4,
                          tensors=lambda m, sel: tuned_tensors(m, sel, part))
    return (lambda cand, report, **kw: to_outcome(train(cand, report))), groups, train, part


def _run_group(monkeypatch, tmp_path, config, run_trial, groups):
    """train_group in this process, with Tune's session calls replaced: returns its reports (checkpoints copied
    under ``tmp_path/ray/e/trial_<first>_tune-g/``, where load_tuned looks)."""
    import shutil

    from autosub.hpo.engines import ray_fused

    reports = []

    def report(metrics, checkpoint=None):
        if checkpoint is not None:
            dest = tmp_path / "ray" / "e" / f"trial_{config['number']:05d}_tune-g" / f"checkpoint_{len(reports):06d}"
            shutil.copytree(checkpoint.path, dest)
        reports.append(dict(metrics))

    monkeypatch.setattr(ray_fused.tune, "report", report)
    monkeypatch.setattr(ray_fused.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray_fused, "fetch_payload", lambda payload: (run_trial, groups))
    monkeypatch.setattr(ray_fused, "where_am_i", lambda number: {"number": number, "pid": 1})
    ray_fused.train_group(config, payload=[None], epochs=2, resources={"cpu": 1})
    return reports


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_tune_trial_trains_a_fused_group_and_each_member_is_told_as_its_unfused_trial(oracle, tmp_path, monkeypatch):
    from autosub.hpo.engines.ray_search import load_tuned
    from autosub.hpo.space import Candidate
    from autosub.model.subtune import tuned_tensors

    searcher = _searcher(tmp_path / "s", trials=3, fuse_trials=4, slots=1)
    config = searcher.suggest("tune-g")
    assert config["number"] == 0 and [m["number"] for m in config["members"]] == [0, 1, 2]  # the budget caps K
    config["members"][1]["lr"] = 1e12  # this member diverges in epoch 1
    run_trial, groups, train, part = _group_payload(oracle)
    reports = _run_group(monkeypatch, tmp_path, config, run_trial, groups)
    assert [r["final"] for r in reports] == [False, True] and reports[0]["epoch"] == 1
    assert "TrainingDiverged" in json.loads(reports[0]["ended"])["1"]["fail_reason"]  # left the group after epoch 1
    for r in reports[:-1]:
        searcher.on_trial_result("tune-g", r)
    searcher.on_trial_complete("tune-g", reports[-1])

    records = searcher.book.records()
    assert [r.state for r in records] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "TrainingDiverged" in records[1].user_attrs["fail_reason"]
    for r in (records[0], records[2]):  # the values, curve and tensors of the same trial trained alone
        cand = Candidate(tuple(r.selection), r.hparams["lr"], r.hparams["weight_decay"], {})
        alone = train(cand)
        assert r.values == pytest.approx([alone.score], abs=1e-9)
        assert r.user_attrs["curve"] == pytest.approx(alone.curve, abs=1e-9) and r.intermediate == {1: alone.curve[0]}
        assert r.user_attrs["fused"] is True and r.user_attrs["fused_k"] == 3 and r.user_attrs["pid"] == 1
        assert r.user_attrs["tune_trial"] == "tune-g" and r.user_attrs["seconds"] > 0
        saved = load_tuned(tmp_path / "ray", r.number, "tune-g")
        want = tuned_tensors(alone.model, cand.selection, part)
        assert set(saved) == set(want) and all(torch.allclose(saved[k], want[k], atol=1e-6) for k in want)
    assert load_tuned(tmp_path / "ray", 1, "tune-g") is None  # the failed member saved nothing

    # ASHA stops the group after epoch 1: the members still training are PRUNED at their epoch-1 scores
    stopped = _searcher(tmp_path / "asha", trials=3, fuse_trials=4)
    assert stopped.suggest("tune-g")["members"][0]["number"] == 0
    stopped.on_trial_result("tune-g", reports[0])
    stopped.on_trial_complete("tune-g", reports[0])
    after = stopped.book.records()
    assert [r.state for r in after] == ["PRUNED", "FAIL", "PRUNED"]
    scores = json.loads(reports[0]["scores"])
    assert after[2].intermediate == {1: pytest.approx(scores["2"])} and "1" not in scores


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_members_the_group_memory_limit_refuses_train_alone_with_the_reason(oracle, tmp_path, monkeypatch):
    searcher = _searcher(tmp_path / "s", trials=2, fuse_trials=4)
    config = searcher.suggest("tune-g")
    run_trial, groups, _, _ = _group_payload(oracle, memory=1)  # one byte: no member fits the group
    reports = _run_group(monkeypatch, tmp_path, config, run_trial, groups)
    assert len(reports) == 1  # nothing trained fused: no epoch reports, one final
    searcher.on_trial_complete("tune-g", reports[0])
    records = searcher.book.records()
    assert [r.state for r in records] == ["COMPLETE", "COMPLETE"]
    assert all(r.user_attrs["fused"] is False and "memory limit" in r.user_attrs["unfused_reason"] for r in records)


def test_group_sizes_follow_the_budget_left_per_slot_and_old_searcher_json_restores(tmp_path):
    wide = _searcher(tmp_path / "a", trials=8, fuse_trials=8, slots=2)
    sizes = [len(wide.suggest(f"t{i}")["members"]) for i in range(2)]
    assert sizes == [4, 2]  # ceil(8 / 2), then ceil(4 / 2): both slots get work
    (tmp_path / "old.json").write_text(json.dumps({"numbers": {"t": 3}, "dups": 0, "stop_reason": ""}))
    old = _searcher(tmp_path / "b")
    old.restore(str(tmp_path / "old.json"))  # 0.2 wrote one trial number per Tune trial
    assert old.numbers == {"t": [3]}
    assert "members" not in _searcher(tmp_path / "c").suggest("u")  # unfused: the one-trial config


def test_a_fused_ray_search_on_the_cluster_matches_the_unfused_search(cluster, model, task, tmp_path):
    from autosub.hpo.backends import RayBackend
    from autosub.hpo.budget import Budget
    from autosub.hpo.searching import search

    kw = dict(selector="greedy", prior=None, epochs=2, seed=0, progress=False)
    fused = search(model, task, Budget(trials=7, epoch_seconds=0.05), backend=RayBackend(address="auto"),
                   training={"fuse": True, "fuse_trials": 4, "batch_size": 32}, run_dir=tmp_path / "fused", **kw)
    alone = search(model, task, Budget(trials=7, epoch_seconds=0.05), training={"fuse": False, "batch_size": 32},
                   run_dir=tmp_path / "alone", **kw)
    assert [(r.number, r.state, r.selection) for r in fused.records] == [
        (r.number, r.state, r.selection) for r in alone.records]
    for a, b in zip(fused.records, alone.records):
        assert (a.values is None) == (b.values is None) and (a.values is None or a.values == pytest.approx(
            b.values, abs=1e-6)), a.number
    groups = {}
    for r in fused.records:
        groups.setdefault(r.user_attrs["tune_trial"], []).append(r.number)
        assert r.user_attrs["fused"] is True and r.user_attrs["node_ip"] == "127.0.0.2"
    assert max(len(g) for g in groups.values()) >= 2 and len(groups) < len(fused.records)  # Tune trials hosted groups
    assert fused.selection == alone.selection and fused.score == pytest.approx(alone.score, abs=1e-6)
    from autosub.hpo.engines.ray import load_tuned

    best = fused.records[fused.best_trial]
    assert load_tuned(tmp_path / "fused" / "ray", best.number, best.user_attrs["tune_trial"]) is not None
    for name, tensor in fused.state.items():  # the final model is the best member's checkpoint
        assert torch.allclose(tensor, alone.state[name], atol=1e-6), name
