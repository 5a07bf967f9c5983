"""One line for every failure, and stores where they belong: the real command line in a subprocess.

Bad input exits 2 and the environment's failures exit 1, each with one line on stderr that says what and where,
and no traceback (unless MXLAB_DEBUG=1). ``--json`` prints its object whatever the ending.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow   # each case is the real command line in a subprocess: `make test`, not test-fast


def mxlab(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    full = {**os.environ, **(env or {})}
    full.pop("MXLAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mxlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=cwd)


def one_line(out, code: int, *fragments: str) -> str:
    """The process exited ``code`` with a single ``mxlab: error:`` line holding ``fragments``; returns it."""
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("mxlab: error:")]
    assert len(errors) == 1, out.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def own_experiment(root: Path, name: str, spec: str, model_py: str | None = None) -> Path:
    folder = root / "experiments" / name
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text(spec)
    if model_py is not None:
        (folder / "model.py").write_text(model_py)
    return folder


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """A workspace of the test's own experiments (beside copies of two real ones)."""
    root = tmp_path / "own"
    (root / "experiments").mkdir(parents=True)
    for name in ("linreg", "softmax"):
        (root / "experiments" / name).symlink_to(REPO / "experiments" / name)
    monkeypatch.setenv("MXLAB_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MXLAB_OPTUNA_STORAGE", raising=False)
    return root


def test_a_model_py_that_raises_or_exits_is_one_line_and_silences_no_other_folder(scratch_root):
    spec = "model: {name: broken_net}\ndata: {name: fashion_mnist}\n"
    own_experiment(scratch_root, "raises", spec, "raise RuntimeError('half-written model file')\n")
    own_experiment(scratch_root, "exits", spec, "import sys\nsys.exit(3)\n")
    one_line(mxlab("run", "raises"), 2, "experiments/raises/model.py", "half-written model file")
    one_line(mxlab("run", "exits"), 2, "experiments/exits/model.py", "SystemExit")
    listed = mxlab("list")
    assert listed.returncode == 0 and {"raises", "exits", "linreg", "softmax"} <= {
        line.split()[0] for line in listed.stdout.splitlines()[1:]}
    checked = mxlab("check")
    assert checked.returncode == 1
    assert "ok     linreg" in checked.stdout and "ok     softmax" in checked.stdout
    assert "error  raises:" in checked.stdout and "error  exits:" in checked.stdout


def test_a_binary_or_huge_spec_names_the_file(scratch_root):
    folder = own_experiment(scratch_root, "binary", "")
    (folder / "experiment.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    one_line(mxlab("run", "binary"), 2, str(folder / "experiment.yaml"), "not a text file")
    folder = own_experiment(scratch_root, "huge", "description: " + "x" * (2 << 20) + "\n")
    one_line(mxlab("run", "huge"), 2, str(folder / "experiment.yaml"), "allowed: a YAML spec of at most")


def test_a_split_smaller_than_the_device_count(scratch_root):
    one_line(mxlab("run", "softmax", "data.limit=1", "train.epochs=1", "train.device=cpu:0,1"), 2,
             "1 example(s) for 2 devices")


def test_json_prints_its_object_on_failure_and_a_resume_hint_follows(scratch_root):
    out = mxlab("run", "linreg", "--json", "train.lr=1e6", "train.epochs=2")
    line = one_line(out, 1, "train/loss is")
    payload = json.loads(out.stdout)
    assert payload["status"] == "FAILED" and payload["error"] == line.removeprefix("mxlab: error: ")
    assert len(payload["run_id"]) == 32
    assert f"mxlab run linreg --resume {payload['run_id']}" in out.stderr
    out = mxlab("run", "nosuch", "--json")
    one_line(out, 2, "unknown experiment 'nosuch'")
    assert json.loads(out.stdout) == {"run_id": None, "experiment": "nosuch", "status": "FAILED",
                                      "error": json.loads(out.stdout)["error"]}


def test_a_corrupt_or_unwritable_store_is_one_line(scratch_root, tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    one_line(mxlab("run", "linreg", env={"MLFLOW_TRACKING_URI": f"sqlite:///{corrupt}"}), 1, "not a database",
             str(corrupt))
    one_line(mxlab("run", "linreg", env={"MLFLOW_TRACKING_URI": "sqlite:////proc/mxlab/mlflow.db"}), 1,
             "/proc/mxlab")


@pytest.mark.parametrize("where", ["store", "checkpoint"])
def test_a_full_disk_is_one_line_and_leaves_the_store_sound_and_no_run_running(scratch_root, where):
    import resource
    import signal

    (scratch_root / "experiments" / "mlp").symlink_to(REPO / "experiments" / "mlp")
    assert mxlab("run", "linreg", "train.epochs=1").returncode == 0   # the store exists, with one run
    db = scratch_root / "mlruns" / "mlflow.db"
    # "store": it cannot grow at all; "checkpoint": the store has room, the first checkpoint (3.2 MB) has not.
    limit = db.stat().st_size + (4096 if where == "store" else 1 << 20)

    def full_disk():   # no file of this process may grow past `limit`: what a full disk does to each write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "mlp", "model.num_hiddens=[1024]",
                          "data.limit=512", "train.epochs=3", "train.system_metrics=false"],
                         capture_output=True, text=True, timeout=300, preexec_fn=full_disk)
    one_line(out, 1, "the disk may be full")
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        if where == "checkpoint":   # the store could still record the failure itself
            assert con.execute("SELECT status FROM runs WHERE name LIKE 'mlp%'").fetchall() == [("FAILED",)]
    assert mxlab("runs", "mlp").returncode == 0   # the next command closes what a failed one could not
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone() == (0,)


def test_an_unreachable_tracking_server_fails_within_15_seconds(scratch_root):
    start = time.monotonic()
    one_line(mxlab("run", "linreg", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}), 1, "127.0.0.1:9")
    assert time.monotonic() - start < 15 + 5   # + the interpreter's and MXNet's start-up


def test_a_refused_database_tracking_store_is_one_line_at_once_without_the_password(scratch_root):
    start = time.monotonic()
    out = mxlab("run", "linreg", env={"MLFLOW_TRACKING_URI": "postgresql://mxlab:pw-s3cret@127.0.0.1:9/mlflow"})
    one_line(out, 1, "127.0.0.1:9", "Connection refused")
    assert "pw-s3cret" not in out.stdout + out.stderr
    assert time.monotonic() - start < 20   # not MLflow's ten retries


def test_a_refused_postgresql_study_storage_is_one_line_without_the_password(scratch_root):
    out = mxlab("tune", "linreg", "--trials", "1", "--storage", "postgresql://mxlab:pw-s3cret@127.0.0.1:9/optuna")
    one_line(out, 1, "127.0.0.1")
    assert "pw-s3cret" not in out.stdout + out.stderr


def test_mlflow_run_id_in_the_environment_is_refused(scratch_root):
    one_line(mxlab("run", "linreg", env={"MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef"}), 1,
             "MLFLOW_RUN_ID=0123456789abcdef0123456789abcdef is set")


def test_debug_shows_the_traceback(scratch_root):
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "linreg"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "MXLAB_DEBUG": "1", "MLFLOW_RUN_ID": "x" * 32})
    assert out.returncode == 1 and "Traceback" in out.stderr


def test_a_sqlite_store_keeps_its_lock_and_artifacts_beside_it_and_nothing_lands_in_the_cwd(scratch_root, tmp_path):
    store = tmp_path / "team" / "store.db"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = mxlab("run", "linreg", "train.epochs=1", "--json", env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
                cwd=cwd)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    assert (store.parent / ".store.db.lock").exists()
    assert list((store.parent / "artifacts" / "linreg").glob(f"*/{run_id}/artifacts/spec.yaml")) or \
        (store.parent / "artifacts" / "linreg" / run_id / "artifacts" / "spec.yaml").exists()
    assert list(cwd.iterdir()) == [] and not (scratch_root / "mlruns").exists()
    # A store named relative to the current folder would land in it: refused, nothing created.
    one_line(mxlab("run", "linreg", env={"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, cwd=cwd), 1,
             "relative to the current folder")
    assert list(cwd.iterdir()) == []


def test_eight_runs_from_two_workspaces_on_one_fresh_store(tmp_path):
    store = tmp_path / "shared" / "mlflow.db"
    procs = []
    for i in range(8):
        root = tmp_path / f"ws{i % 2}"
        if not root.exists():
            (root / "experiments").mkdir(parents=True)
            (root / "experiments" / "linreg").symlink_to(REPO / "experiments" / "linreg")
        env = {**os.environ, "MXLAB_ROOT": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "mxlab.cli", "run", "linreg", "train.epochs=1",
                                       f"train.seed={i}", "--json"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert {r["status"] for r in results} == {"FINISHED"} and len({r["run_id"] for r in results}) == 8
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        statuses = db.execute("SELECT status FROM runs").fetchall()
    assert sorted(statuses) == [("FINISHED",)] * 8
