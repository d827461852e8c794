"""Many workers, one real database: worker processes of one search share a PostgreSQL storage on loopback
(``resume="join"``); one worker is SIGKILLed mid-trial. Every completed trial is recorded once, the killed trial is
failed with a reason and retried, and the budget (the study's total) is respected across workers.

The server: ``$AUTOSUB_TEST_POSTGRES`` (a URL, e.g. the cluster ``.ci/run`` starts), else a throwaway cluster made
here with Debian's ``initdb``/``pg_ctl`` on 127.0.0.1 (run as the ``postgres`` user when the tests run as root);
skipped, with the reason, when neither is possible or no PostgreSQL driver (psycopg) is installed.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import optuna
import pytest

from conftest import throwaway_database

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 8
WORKERS = 3
PASSWORD = "pw-never-logged"

WORKER = textwrap.dedent('''
    import logging, os, signal, sys
    import torch, timm
    import autosub.hpo.searching as S
    from autosub.data.datasets import digits
    from autosub.data.task import Split, Task

    url, run_dir, kill = sys.argv[1], sys.argv[2], sys.argv[3] == "kill"
    logging.basicConfig(level=logging.INFO, filename=os.path.join(run_dir + ".log"))
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    t = digits(model=model, image_size=16, samples_per_class=6)
    task = Task(train=t.train, val=Split(t.val.inputs[:60], t.val.targets[:60], name="val"),
                num_classes=t.num_classes)
    if kill:  # this worker dies after the first epoch of its first trial, as after an OOM kill
        real_fit, calls = S.fit, []
        def fit(*a, callback=None, **k):
            calls.append(1)
            if len(calls) == 1 and callback is not None:
                def dying(epoch, score):  # before the report: a pruner or budget stop must not pre-empt the kill
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_fit(*a, callback=dying, **k)
            return real_fit(*a, callback=callback, **k)
        S.fit = fit
    res = S.search(model, task, %(budget)d, selector="random", prior=None, epochs=2, seed=int(sys.argv[4]),
                   resume="join", run={"run_dir": run_dir, "storage": url, "study_name": "pg", "progress": False})
    print("STORAGE", res.storage)
    print("DASHBOARD", res.dashboard_command)
''') % {"budget": BUDGET}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install 'psycopg[binary]'")
    if os.environ.get("AUTOSUB_TEST_POSTGRES"):
        with throwaway_database(os.environ["AUTOSUB_TEST_POSTGRES"], "autosub_test") as url:
            yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql) and no $AUTOSUB_TEST_POSTGRES")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="autosub-pg-"))  # outside pytest's 0700 tmp dir: the server user reads it
    if as_user:
        shutil.chown(root, user="postgres")
    data, port = root / "data", _free_port()
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "server.log"),
                        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a throwaway PostgreSQL cluster: {exc} {getattr(exc, 'stderr', b'')!r}")
    # trust auth on loopback: the password is accepted and ignored; it is there to prove it is never logged
    yield f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True, timeout=120)
    shutil.rmtree(root, ignore_errors=True)


def test_workers_share_one_postgres_study_and_a_killed_worker_loses_nothing(pg_url, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = []
    for i in range(WORKERS):
        procs.append(subprocess.Popen([sys.executable, str(script), pg_url, str(tmp_path / f"w{i}"),
                                       "kill" if i == 0 else "live", str(i)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path)))
        time.sleep(1.0)  # the first worker creates the study; the others join it
    outs = [p.communicate(timeout=900) for p in procs]
    assert procs[0].returncode == -signal.SIGKILL, outs[0][1][-3000:]
    for p, (out, err) in zip(procs[1:], outs[1:]):
        assert p.returncode == 0, err[-3000:]
        assert ":***@127.0.0.1" in out and PASSWORD not in out  # SearchResult.storage, dashboard_command
    logs = "".join(Path(f).read_text() for f in glob.glob(str(tmp_path / "w*.log")))
    assert "search stopped" in logs  # the workers' INFO logs were written
    assert PASSWORD not in logs and all(PASSWORD not in err for _, err in outs)

    trials = optuna.load_study(study_name="pg", storage=pg_url).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state.name in ("WAITING", "RUNNING")]
    killed = [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("pid") == procs[0].pid
              and not t.user_attrs.get("unrun")]
    assert len(killed) == 1  # the trial the killed worker was running
    reasons = {t.number: t.user_attrs.get("fail_reason") for t in trials}
    study = optuna.load_study(study_name="pg", storage=pg_url)
    lost_reason = study.user_attrs.get(f"autosub_fail_reason:{killed[0].number}")
    assert lost_reason and lost_reason.startswith(f"lost: its driver (pid {procs[0].pid}")
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].params == killed[0].params  # run again by another worker …
    assert retry[0].state.name in ("COMPLETE", "PRUNED")  # … to an end (the pruner may stop it like any trial)
    assert retry[0].user_attrs["pid"] != procs[0].pid  # another worker ran it
    counted = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and not t.user_attrs.get("unrun")
               and t.number != killed[0].number]
    assert len(counted) == BUDGET, [(t.number, t.state.name, reasons[t.number]) for t in trials]
    done = [t for t in trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["pid"] for t in done}) >= 2  # the work was shared
    assert all(t.datetime_complete is not None for t in done)


def test_a_password_in_the_storage_url_is_masked_in_the_result_and_the_log(pg_url, tmp_path, caplog):
    import torch
    import timm

    from autosub.data.datasets import digits
    from autosub.hpo.searching import search

    caplog.set_level(logging.DEBUG)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    task = digits(model=model, image_size=16, samples_per_class=4)
    res = search(model, task, 1, prior=None, epochs=1, selector="random",
                 run={"run_dir": tmp_path, "storage": pg_url, "study_name": "mask", "progress": False})
    assert ":***@127.0.0.1" in res.storage and PASSWORD not in res.storage
    assert PASSWORD not in res.dashboard_command and PASSWORD not in str(res.config)
    assert PASSWORD not in caplog.text
    res.save(tmp_path / "saved")
    assert PASSWORD not in "".join(p.read_text(errors="ignore") for p in (tmp_path / "saved").rglob("*.json"))
