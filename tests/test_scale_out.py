"""Scaling out, for real: a PostgreSQL cluster of its own, an MLflow tracking server on it, worker processes.

The cluster is created with ``initdb`` in a temporary folder and listens on 127.0.0.1 at a free port, so the
tests need the PostgreSQL server binaries (Debian: ``apt-get install postgresql``) and nothing running.
As root, the cluster runs as the ``postgres`` user, since PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pw"
QUICK = ["data.limit=512", "data.batch_size=128", "--pruner", "none", "--seed", "0"]


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    def __init__(self, port: int):
        self.port = port

    def url(self, database: str) -> str:
        return f"postgresql://mxlab:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="mxlab", password=PASSWORD, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)


@pytest.fixture(scope="module")
def postgres():
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found; Debian: apt-get install postgresql "
                    "(.ci/run installs it)")
    base = Path(tempfile.mkdtemp(prefix="mxlab-pg-"))
    (base / "pw").write_text(PASSWORD + "\n")
    prefix = []
    if os.geteuid() == 0:
        for path in (base, base / "pw"):
            shutil.chown(path, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(base / "data"), "-U", "mxlab", "--pwfile",
                    str(base / "pw"), "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, timeout=120)
    # Durability is not the point of a test cluster: skipping fsync keeps it quick on a shared machine.
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off "
               f"-c full_page_writes=off -c max_connections=100")
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"),
                    "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
    try:
        yield Postgres(port)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(base / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` with a PostgreSQL backend store and a local artifact root, on 127.0.0.1."""
    backend = postgres.create_database("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                             "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120   # 10-20 s on 2 busy cores: migrations, then the app
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up: {(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def cluster(workspace, postgres, mlflow_server, monkeypatch, request):
    """The workspace pointed at the tracking server and at a fresh PostgreSQL study database."""
    storage = postgres.create_database(f"optuna_{request.node.name.lower()}"[:60])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MXLAB_OPTUNA_STORAGE", storage)
    return storage


def _tune(*args: str) -> list[str]:
    return [sys.executable, "-m", "mxlab.cli", "tune", "lenet", "--workers", "2", "--json", *args]


def _study(storage, name: str):
    from mxlab.tuning.storage import open_storage

    if isinstance(storage, str):
        storage = open_storage(storage, heartbeat=None)
    return optuna.load_study(study_name=name, storage=storage)


def _child_runs(parent_run_id: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient()   # MLFLOW_TRACKING_URI: through the server
    exp = c.get_experiment_by_name("lenet")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    return c, runs


def test_two_workers_share_one_study_on_postgresql(cluster):
    out = subprocess.run(_tune("--trials", "6", "--study", "shared", "train.epochs=1", *QUICK),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    print("the tune's stderr:", out.stderr, sep="\n")   # pytest shows it if anything below fails
    assert PASSWORD not in out.stdout and PASSWORD not in out.stderr
    assert result["storage"].startswith("postgresql://mxlab@127.0.0.1:")
    assert result["n_trials"] == 6 and result["states"]["COMPLETE"] == 6 and result["states"]["RUNNING"] == 0, (
        result["states"])

    study = _study(cluster, "shared")
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["mxlab.worker"] for t in trials}
    assert len(workers) == 2, workers   # both processes ran trials

    c, runs = _child_runs(result["parent_run_id"])
    assert len(runs) == 6
    assert sorted(int(r.data.tags["mxlab.trial"]) for r in runs) == list(range(6))
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["optuna.state"] for r in runs} == {"COMPLETE"}
    assert all(r.data.metrics["val/acc"] >= 0 for r in runs)
    parent = c.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mxlab.study_storage"] == result["storage"]
    assert parent.data.metrics["trials.complete"] == 6
    assert "plots/optimization_history.html" in {a.path for a in c.list_artifacts(parent.info.run_id, "plots")}


def test_runs_that_make_one_new_dataset_or_experiment_tag_at_once_all_succeed(cluster):
    # The server looks for a dataset or an experiment's tag, then inserts it: runs that make the same new one at
    # the same moment (a study's workers, on their first trials) collide on its key, and every one must succeed.
    import threading

    from mlflow.tracking import MlflowClient

    from mxlab import tracking

    c = MlflowClient()   # MLFLOW_TRACKING_URI: through the server
    inputs = [{"name": f"race-{split}", "source": "/nowhere", "num_examples": 8, "context": context}
              for split, context in (("train", "training"), ("test", "test"))]
    errors = []

    def at_once(write, args):
        start = threading.Barrier(len(args))

        def one(arg):
            start.wait()
            try:
                write(arg)
            except Exception as exc:   # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(a,)) for a in args]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    for round_ in range(3):
        name = f"race-{round_}"
        exp_id = c.create_experiment(name)
        at_once(lambda _: tracking.experiment_id(c, name, description="a description new to the store"), range(8))
        runs = [c.create_run(exp_id).info.run_id for _ in range(8)]
        batch = [{**d, "digest": f"round-{round_}"} for d in inputs]   # new to the store each round
        at_once(lambda run_id: tracking.log_datasets(c, run_id, batch), runs)
        for run_id in runs:
            logged = {(i.dataset.name, i.dataset.digest) for i in c.get_run(run_id).inputs.dataset_inputs}
            assert logged == {(d["name"], d["digest"]) for d in batch}, errors
        assert c.get_experiment(exp_id).tags["mlflow.note.content"] == "a description new to the store"
    assert not errors


def _is_child(pid: int, parent: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return any(line.split()[1:] == [str(parent)] for line in status.splitlines() if line.startswith("PPid:"))


def test_a_killed_worker_s_trial_is_failed_and_retried(cluster):
    # Heartbeat every 2 s: a trial silent for 4 s is stale. Four epochs leave time to kill one mid-trial.
    proc = subprocess.Popen(_tune("--trials", "6", "--study", "killed", "--heartbeat", "2", "train.epochs=4",
                                  *QUICK), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from mxlab.tuning.storage import open_storage

    storage = open_storage(cluster, heartbeat=None)   # one engine for all the polling
    victim = None
    try:
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = _study(storage, "killed")
            except KeyError:
                continue
            for t in study.get_trials(deepcopy=False):
                # Mid-trial: it reported its first epoch and is still running.
                if t.state.name == "RUNNING" and t.intermediate_values and "mxlab.worker" in t.user_attrs:
                    pid = int(t.user_attrs["mxlab.worker"].rsplit(":", 1)[1])
                    if _is_child(pid, proc.pid):
                        os.kill(pid, signal.SIGKILL)
                        victim = t.number
                        break
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no trial was seen running"
    assert proc.returncode == 0, stderr[-3000:]
    assert "ended with signal 9" in stderr
    result = json.loads(stdout)

    study = _study(cluster, "killed")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[victim].state.name == "FAIL"
    assert not [n for n, t in trials.items() if t.state.name == "RUNNING"]
    retries = [t for t in trials.values()
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim]
    assert len(retries) == 1 and retries[0].params == trials[victim].params
    # The survivor runs the retry when it notices the stale trial first; else it waits for the next worker.
    assert retries[0].state.name in ("COMPLETE", "WAITING")
    assert result["states"]["FAIL"] == 1 and result["states"]["RUNNING"] == 0

    c, runs = _child_runs(result["parent_run_id"])
    assert "RUNNING" not in {r.info.status for r in runs}
    killed = [r for r in runs if r.data.tags["mxlab.trial"] == str(victim)]
    assert len(killed) == 1
    assert killed[0].info.status == "FAILED" and killed[0].data.tags["optuna.state"] == "FAIL"
    assert "worker" in killed[0].data.tags["mxlab.error"]
    for run in runs:
        expected = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}[run.data.tags["optuna.state"]]
        assert run.info.status == expected
    if retries[0].state.name == "COMPLETE":
        retry_run = [r for r in runs if r.data.tags["mxlab.trial"] == str(retries[0].number)]
        assert retry_run[0].data.tags["mxlab.retry_of"] == str(victim)
    assert c.get_run(result["parent_run_id"]).info.status == "FINISHED"


def test_a_stopped_study_on_postgresql_loses_nothing(cluster, monkeypatch):
    # The storage typed on the command line this time: its password must reach no tag or note either.
    monkeypatch.delenv("MXLAB_OPTUNA_STORAGE")
    args = _tune("--trials", "4", "--study", "stopped", "--storage", cluster, "train.epochs=4", *QUICK)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:   # stop it mid-trial
            time.sleep(0.2)
            try:
                trials = _study(cluster, "stopped").get_trials(deepcopy=False)
            except KeyError:
                continue
            if any(t.state.name == "RUNNING" and t.intermediate_values for t in trials):
                break
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    print("the stopped tune's stderr:", stderr, sep="\n")   # pytest shows it if anything below fails
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    stopped = json.loads(stdout)
    assert stopped["status"] == "KILLED"

    def nothing_running():
        trials = _study(cluster, "stopped").get_trials(deepcopy=False)
        assert not [t.number for t in trials if t.state.name == "RUNNING"]
        from mlflow.tracking import MlflowClient

        c = MlflowClient()   # this study's runs only: the server is shared by the module's tests
        runs = c.search_runs([c.get_experiment_by_name("lenet").experiment_id],
                             filter_string="tags.`mxlab.study` = 'stopped'")
        assert "RUNNING" not in {r.info.status for r in runs}
        assert not [r.info.run_id for r in runs if any(PASSWORD in v for v in r.data.tags.values())]
        return trials, runs

    trials, runs = nothing_running()
    interrupted = [t.number for t in trials if t.state.name == "FAIL"]
    assert interrupted
    again = subprocess.run(_tune("--trials", "1", "--study", "stopped", "--storage", cluster, "train.epochs=4",
                                 *QUICK), capture_output=True, text=True, timeout=300)
    print("the rerun's stderr:", again.stderr, sep="\n")
    assert again.returncode == 0, again.stderr[-3000:]
    trials, runs = nothing_running()
    # Each interrupted trial queued again with its parameters, to continue its own MLflow run; the rerun's one
    # trial took the first of them.
    assert _study(cluster, "stopped").user_attrs["mxlab.retried"] == interrupted
    retries = [t for t in trials if "mxlab.resume_run" in t.user_attrs]
    assert len(retries) == len(interrupted) and "COMPLETE" in {t.state.name for t in retries}
    params = sorted(json.dumps(trials[n].params, sort_keys=True) for n in interrupted)
    assert sorted(json.dumps(t.params or trials[t.user_attrs["mxlab.trial"]].params, sort_keys=True)
                  for t in retries) == params
    parents = [r for r in runs if r.data.tags.get("mxlab.role") == "study"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "KILLED"]
