"""Nothing lost on any stop: every stop closes the run, and `--resume` continues it to the same result.

Each test drives the real command line in a subprocess, stops it after its first epoch is in the store, and
reads the store directly with sqlite3 (what anyone else would see).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import as_from_a_terminal

pytestmark = pytest.mark.slow

# LeNet on a slice big enough that an epoch outlasts the polling, small enough for a test.
SPEC = ["train.epochs=3", "data.limit=6000", "train.device=cpu"]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    # As from a terminal: a shell running the suite in the background leaves SIGINT ignored, and a child
    # would inherit that.
    return subprocess.Popen([sys.executable, "-m", "mxlab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            preexec_fn=as_from_a_terminal)


def store(root: Path) -> Path:
    return root / "mlruns" / "mlflow.db"


def query(root: Path, sql: str, *params):
    if not store(root).exists():
        return []
    try:
        with sqlite3.connect(store(root), timeout=30) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:   # the schema is still being created or migrated
        return []


def wait_for_epoch(root: Path, proc: subprocess.Popen, epoch: int, role_filter: str = "", timeout: float = 300):
    """The run id of the first run with ``epoch`` logged, once it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(root, "SELECT run_uuid FROM metrics WHERE key = 'train/loss' AND step >= ?", epoch)
        if rows:
            return rows[0][0]
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"no epoch {epoch} within {timeout}s")


def run_row(root: Path, run_id: str) -> dict:
    status, = query(root, "SELECT status FROM runs WHERE run_uuid = ?", run_id)[0]
    tags = dict(query(root, "SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    steps = sorted(s for (s,) in query(root, "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'train/loss'",
                                       run_id))
    return {"status": status, "tags": tags, "steps": steps}


def straight(workspace, name: str, overrides: list[str]) -> dict:
    """The metrics of the same spec trained without a stop."""
    import mxlab

    return mxlab.run(name, overrides, track=False, progress=False).metrics


def assert_same_final(resumed: dict, reference: dict) -> None:
    for key in ("train/loss", "train/acc", "test/loss", "test/acc"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-6), key


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_any_stop_closes_the_run_and_resume_finishes_it_like_an_unstopped_one(workspace, sig):
    proc = start("run", "lenet", *SPEC, "--json")
    run_id = wait_for_epoch(workspace, proc, 1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert run_row(workspace, run_id)["status"] == "RUNNING"   # nothing could close it yet
        leftovers = list(Path("/tmp").glob(f"mxlab-{run_id}-*"))
        assert leftovers, "the killed run's temporary folder is there to be cleaned"
    else:
        assert proc.returncode == EXIT[sig], err
        assert json.loads(out) == {"run_id": run_id, "experiment": "lenet", "status": "KILLED",
                                   "error": f"stopped by {signal.Signals(sig).name}"}
        assert f"mxlab run lenet --resume {run_id}" in err and "Traceback" not in err
        row = run_row(workspace, run_id)
        assert row["status"] == "KILLED" and row["tags"]["mxlab.stopped_by"] == signal.Signals(sig).name

    resumed = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "lenet", "--resume", "last", "--json"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["run_id"] == run_id and result["status"] == "FINISHED"
    row = run_row(workspace, run_id)
    assert row["status"] == "FINISHED" and row["steps"] == [1, 2, 3]   # every epoch once, at its own step
    if sig == signal.SIGKILL:   # closed KILLED by the next command, with why, and its folder removed
        assert "ended without closing the run" in row["tags"]["mxlab.closed_because"]
        assert not list(Path("/tmp").glob(f"mxlab-{run_id}-*"))
    assert_same_final(result["metrics"], straight(workspace, "lenet", SPEC))


FLAKY_MODEL = '''
import os
from mxnet.gluon import nn
from mxlab.registry import models


class Flaky(nn.Block):
    """A softmax regression that fails while a flag file exists: a crash mid-run, or (flag says nan) a NaN loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.out = nn.Dense(10)

    def forward(self, X):
        flag = os.environ["FLAKY_FLAG"]
        if os.path.exists(flag):
            if open(flag).read() == "nan":
                return self.out(X) * float("nan")
            raise RuntimeError("the data disk went away")
        return self.out(X)


@models.register()
def flaky(*, num_outputs: int = 10):
    return Flaky()
'''


@pytest.mark.parametrize("fault", ["crash", "nan"])
def test_a_crash_fails_the_run_and_resume_finishes_it(workspace, tmp_path, monkeypatch, fault):
    folder = tmp_path / "own" / "experiments" / "flaky"
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text("model: {name: flaky}\ndata: {name: fashion_mnist}\n"
                                            "train: {lr: 0.1, init: normal, hybridize: false}\n")
    (folder / "model.py").write_text(FLAKY_MODEL)
    root = folder.parent.parent
    flag = tmp_path / "flag"
    monkeypatch.setenv("MXLAB_ROOT", str(root))
    monkeypatch.setenv("FLAKY_FLAG", str(flag))
    overrides = ["train.epochs=3", "data.limit=20000"]
    proc = start("run", "flaky", *overrides, "--json")
    run_id = wait_for_epoch(root, proc, 1)
    # Whole at once: the forward pass reads the flag every few milliseconds, and a file being written can be
    # seen empty (under CI's load, both suites once saw it so and crashed the nan case).
    (tmp_path / "flag.part").write_text(fault)
    os.replace(tmp_path / "flag.part", flag)
    out, err = proc.communicate(timeout=120)
    failure = "RuntimeError: the data disk went away" if fault == "crash" else "train/loss is nan"
    assert proc.returncode == 1 and failure in err, err
    assert f"continue it with: mxlab run flaky --resume {run_id}" in err
    assert json.loads(out)["status"] == "FAILED" and run_row(root, run_id)["status"] == "FAILED"
    flag.unlink()
    resumed = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "flaky", "--resume", run_id, "--json"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert run_row(root, run_id)["steps"] == [1, 2, 3]
    assert_same_final(json.loads(resumed.stdout)["metrics"], straight(workspace, "flaky", overrides))


def test_resume_extends_with_epochs_only_and_refuses_what_it_cannot_trust(workspace):
    first = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "softmax", "train.epochs=1", "data.limit=2000",
                            "--json"], capture_output=True, text=True, timeout=300)
    run_id = json.loads(first.stdout)["run_id"]

    def resume(*extra):
        return subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "softmax", "--resume", run_id, *extra],
                              capture_output=True, text=True, timeout=300)

    out = resume("train.lr=0.5")
    assert out.returncode == 2 and "train.lr: cannot change on --resume; allowed: train.epochs" in out.stderr
    out = resume()
    assert out.returncode == 2 and "FINISHED its 1 epochs" in out.stderr
    # As a stop while it saved its model leaves it: KILLED, with every epoch in its checkpoint. Resume trains
    # nothing and finishes the reports and the model.
    with sqlite3.connect(store(workspace)) as db:
        db.execute("UPDATE runs SET status = 'KILLED' WHERE run_uuid = ?", (run_id,))
    out = resume("--json")
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "FINISHED", out.stderr
    assert run_row(workspace, run_id)["steps"] == [1]
    out = resume("train.epochs=2", "--json")
    assert out.returncode == 0, out.stderr
    assert run_row(workspace, run_id)["steps"] == [1, 2]

    checkpoint = next((workspace / "mlruns" / "artifacts").rglob(f"{run_id}/artifacts/checkpoint"))
    # A checkpoint whose optimizer state went by sorted layer names (before states_order) is refused, not misplaced.
    record = json.loads((checkpoint / "last.json").read_text())
    (checkpoint / "last.json").write_text(json.dumps({k: v for k, v in record.items() if k != "states_order"}))
    out = resume("train.epochs=3")
    assert out.returncode == 1 and "optimizer state in the order of an earlier mxlab" in out.stderr
    assert "Traceback" not in out.stderr
    (checkpoint / "last.json").write_text(json.dumps(record))

    # The optimizer state is a pickle: one that no longer matches its recorded hash is never loaded.
    (checkpoint / "last.states").write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    out = resume("train.epochs=3")
    assert out.returncode == 1 and "refusing to load an optimizer state" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_checkpoint_of_another_network_or_a_truncated_one_is_one_line(workspace):
    runs = {}
    for name, extra in (("softmax", []), ("lenet", [])):
        out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", name, "train.epochs=1", "data.limit=500",
                              "--json", *extra], capture_output=True, text=True, timeout=300)
        runs[name] = json.loads(out.stdout)["run_id"]
    artifacts = workspace / "mlruns" / "artifacts"
    target = next(artifacts.rglob(f"{runs['softmax']}/artifacts/checkpoint"))
    other = next(artifacts.rglob(f"{runs['lenet']}/artifacts/checkpoint"))
    (target / "last.params").write_bytes((other / "last.params").read_bytes())
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "softmax", "--resume", runs["softmax"],
                          "train.epochs=2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "checkpoint/last.params does not fit this network" in out.stderr
    assert "Parameter '" in out.stderr   # Gluon's reason: which parameter is missing or of another shape
    payload = (other / "last.params").read_bytes()
    (target / "last.params").write_bytes(payload[: len(payload) // 3])
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "softmax", "--resume", runs["softmax"],
                          "train.epochs=2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "checkpoint/last.params" in out.stderr


def tune_state(root: Path, study: str) -> dict:
    with sqlite3.connect(root / "mlruns" / "optuna.db", timeout=30) as db:
        trials = db.execute("SELECT t.number, t.state FROM trials t JOIN studies s ON t.study_id = s.study_id "
                            "WHERE s.study_name = ? ORDER BY t.number", (study,)).fetchall()
    runs = query(root, "SELECT status FROM runs")
    return {"trials": trials, "runs": [s for (s,) in runs]}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_a_stopped_study_loses_nothing_and_retries_the_trial_from_its_checkpoint(workspace, sig):
    args = ["tune", "lenet", "--trials", "1", "--pruner", "none", "--seed", "0", *SPEC]
    proc = start(*args)
    trial_run = wait_for_epoch(workspace, proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), err
    if sig != signal.SIGKILL:
        assert "Traceback" not in err
        assert "RUNNING" not in [state for _, state in tune_state(workspace, "lenet")["trials"]]
        assert "RUNNING" not in tune_state(workspace, "lenet")["runs"]
        parent = query(workspace, "SELECT r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                                  "WHERE t.key = 'mlflow.note.content' AND r.name LIKE 'study-%'")
        assert parent == [("KILLED", shlex.join(["mxlab", *args]))], parent   # its notes: the command, typed again
    if sig == signal.SIGINT:   # the same closing path as SIGTERM: the retry is tested there
        return
    if sig == signal.SIGHUP:
        # As if stopped before its trial began training (with several workers, one may be stopped there while
        # another is mid-epoch): its run holds no spec.yaml, so the retry has nothing to continue.
        uri, = query(workspace, "SELECT artifact_uri FROM runs WHERE run_uuid = ?", trial_run)[0]
        shutil.rmtree(uri.removeprefix("file://"))

    again = subprocess.run([sys.executable, "-m", "mxlab.cli", *args, "--json"], capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    state = tune_state(workspace, "lenet")
    assert "RUNNING" not in [s for _, s in state["trials"]] and "RUNNING" not in state["runs"]
    assert state["trials"][0] == (0, "FAIL") and (1, "COMPLETE") in state["trials"]
    row = run_row(workspace, trial_run)
    if sig == signal.SIGHUP:   # the retry trained a run of its own; the stopped one stays as it was left
        assert row["status"] == "KILLED" and row["steps"] == [1] and row["tags"]["optuna.state"] == "FAIL"
        assert "stopped before it trained; starting afresh" in again.stderr
        [(retry_run,)] = query(workspace, "SELECT run_uuid FROM tags WHERE key = 'mxlab.trial' AND value = '1'")
        row = run_row(workspace, retry_run)
    assert row["status"] == "FINISHED" and row["steps"] == [1, 2, 3]   # else: went on in the trial's own run
    assert row["tags"]["mxlab.trial"] == "1" and row["tags"]["mxlab.retry_of"] == "0"
