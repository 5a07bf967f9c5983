"""`mxlab launch` on loopback: a scheduler, a server and two workers of MXNet's parameter server, for real.

The slow tests start whole jobs (four processes, each importing MXNet) and check what a user relies on: one
MLflow run for the job, identical networks on every worker, nothing listening beyond 127.0.0.1, and no process
or port left behind when a worker dies or the launcher is stopped.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mxlab
from mxlab import launch, runner, tracking
from mxlab.coerce import SpecError
from mxlab.data.core import ArrayLoader, DataError, load_data
from tests.conftest import as_from_a_terminal

# Small enough for two shared cores, large enough to learn: 0.79 test accuracy, seed to seed within 0.01.
LEARNS = ["model.activation=relu", "train.optimizer=adam", "train.lr=0.002", "data.limit=6000", "train.epochs=5"]
STARTED = re.compile(r"started (\w+(?: \d+)?) \(pid (\d+)\) on ([\d.]+)(?::(\d+))?")


# ---------------------------------------------------------------- without processes

def test_hosts_file_reads_like_mxnets_launcher(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1\n\n10.0.0.2:2222  # a comment\n")
    assert launch.read_hosts(hosts) == [("10.0.0.1", 22), ("10.0.0.2", 2222)]
    hosts.write_text("10.0.0.1:ssh\n")
    with pytest.raises(ValueError, match=r"line 1: got '10.0.0.1:ssh'; allowed: an address or address:ssh_port"):
        launch.read_hosts(hosts)
    hosts.write_text("# nobody\n")
    with pytest.raises(ValueError, match="no host"):
        launch.read_hosts(hosts)


def test_launch_trains_dist_sync_unless_told_otherwise(workspace):
    spec, overrides = launch.resolve("lenet", ["train.epochs=1"], None)
    assert spec.train.kvstore == "dist_sync" and overrides == ["train.epochs=1", "train.kvstore=dist_sync"]
    spec, _ = launch.resolve("lenet", ["train.kvstore=dist_async"], None)
    assert spec.train.kvstore == "dist_async"
    with pytest.raises(ValueError, match="train.kvstore=local: mxlab launch trains across processes; allowed: "
                                         "dist_sync, dist_sync_device, dist_async"):
        launch.resolve("lenet", ["train.kvstore=local"], None)


def test_launch_json_reports_a_refused_spec_too(workspace, capsys):
    from mxlab import cli

    assert cli.main(["launch", "lenet", "-n", "2", "--json", "train.lr=-1"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"run_id": None, "experiment": "lenet", "status": "FAILED",
                               "error": json.loads(out)["error"]}
    assert "train.lr: got -1" in err


def test_kvstore_is_checked_by_the_spec(workspace):
    assert mxlab.load_spec("lenet").train.kvstore == "device"   # what the Trainer always used
    with pytest.raises(SpecError, match=r"train.kvstore: got 'nccl'; allowed: .*dist_sync"):
        mxlab.load_spec("lenet", ["train.kvstore=nccl"])
    with pytest.raises(SpecError, match="train.clip_gradient: got 1.0; allowed: null with train.kvstore=dist_async"):
        mxlab.load_spec("lenet", ["train.kvstore=dist_async", "train.clip_gradient=1"])


def test_a_distributed_kvstore_outside_a_job_says_how_to_start_one(workspace):
    spec = mxlab.load_spec("linreg", ["train.kvstore=dist_sync"])
    with pytest.raises(ValueError, match=r"needs MXNet's parameter server: start the job with `mxlab launch"):
        runner.run(spec, track=False, progress=False)


def test_a_scratch_model_cannot_use_the_parameter_server(workspace):
    from mxlab.train import make_updater

    class Scratch:
        def make_updater(self, train):
            raise AssertionError("never reached")

    train = mxlab.load_spec("linreg", ["train.kvstore=dist_sync"]).train
    with pytest.raises(ValueError, match="written from scratch and updates its own parameters"):
        make_updater(Scratch(), train, [None])


@pytest.mark.parametrize("n, workers, batch", [(1000, 2, 128), (513, 2, 128), (1001, 3, 100), (7, 7, 4),
                                               (2049, 2, 64), (9, 2, 1)])
def test_shards_are_disjoint_cover_the_split_and_step_together(n, workers, batch):
    from mxlab.devices import import_mxnet

    mx = import_mxnet()
    X = np.arange(n, dtype=np.float32).reshape(n, 1)
    loader = ArrayLoader(X, X[:, 0], batch, mx.cpu(), shuffle=True)
    shards = [loader.shard(rank, workers) for rank in range(workers)]
    assert len({len(s) for s in shards}) == 1   # as many steps on every worker
    batches = [[xb.asnumpy()[:, 0] for xb, _ in s] for s in shards]
    assert all(len(b) == len(s) for b, s in zip(batches, shards))
    assert min(len(xb) for shard in batches for xb in shard) >= min(batch // 2, n // workers)   # no tiny batch
    union = np.concatenate([xb for shard in batches for xb in shard])
    assert len(set(union)) == len(union)   # disjoint
    # Every example each epoch; with batches of one, a larger shard cannot take an extra step alone.
    assert len(union) == n - (n % workers if batch == 1 else 0)


def test_an_epoch_s_metrics_are_the_whole_job_s(workspace):
    """What rank 0 logs: loss and accuracy sums and the example count summed over the workers, the time of the
    slowest; through a stand-in for the parameter server that adds the other worker's push."""
    from mxlab.devices import import_mxnet
    from mxlab.train import GluonUpdater

    mx = import_mxnet()

    class TwoWorkerServer:   # sums this worker's push with what worker 1 pushed for the same key
        def __init__(self, other):
            self.other, self.stored = other, {}

        def init(self, key, value):
            self.stored[key] = value.copy()

        def push(self, key, value):
            self.stored[key] = value + self.other

        def pull(self, key, out):
            out[:] = self.stored[key]

    # worker 1: loss sum 30, correct 40, 50 examples, 7 s; this worker (rank 0): 10, 20, 60, 3 s
    updater = GluonUpdater.__new__(GluonUpdater)
    updater.sync, updater.workers, updater.rank, updater.all_params = True, 2, 0, []
    updater._stats_ready = False
    updater.kv = TwoWorkerServer(mx.nd.array([30, 40, 50, 0, 7], dtype="float64"))
    totals, count, seconds = updater.end_epoch([10.0, 20.0], 60, 3.0)
    assert (totals, count, seconds) == ([40.0, 60.0], 110, 7.0)


def test_a_corpus_is_not_sharded_yet(workspace):
    from mxlab.devices import import_mxnet

    spec = mxlab.load_spec("rnn", ["data.limit=4000"])
    with pytest.raises(DataError, match="cannot be sharded across workers yet; allowed with mxlab launch"):
        load_data(spec, import_mxnet().cpu(), shard=(0, 2))


# ---------------------------------------------------------------- whole jobs on loopback

class Job:
    """``mxlab launch`` in its own session (as a shell runs it), its stderr read as it comes."""

    def __init__(self, *args: str):
        self.popen = subprocess.Popen([sys.executable, "-m", "mxlab.cli", "launch", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True,
                                      preexec_fn=as_from_a_terminal)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.popen.stderr:
            self.lines.append(line)

    def started(self) -> dict[str, tuple[int, int | None]]:
        """role -> (pid, port) of every process the launcher started."""
        found = {}
        for line in list(self.lines):
            m = STARTED.search(line)
            if m:
                found[m.group(1)] = (int(m.group(2)), int(m.group(4)) if m.group(4) else None)
        return found

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            assert self.popen.poll() is None, "".join(self.lines)
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{''.join(self.lines)}")

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out = self.popen.stdout.read()
        code = self.popen.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code, out, "".join(self.lines)


def listening(pids: set[int]) -> set[str]:
    """The TCP addresses (ip:port) on which any of ``pids`` listens, from /proc."""
    inodes = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:   # 0A: LISTEN
                address, port = fields[1].split(":")
                ip = "ipv6:" + address if v6 else socket.inet_ntoa(bytes.fromhex(address)[::-1])
                found.add(f"{ip}:{int(port, 16)}")
    return found


def assert_nothing_left(job: Job, seen: set[str]) -> None:
    """No process of the job alive, and nothing listening on any address ``seen`` while it ran."""
    started = job.started()
    assert {"scheduler", "server 0", "worker 0", "worker 1"} <= set(started), started
    for role, (pid, _) in started.items():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), role
    assert f"127.0.0.1:{started['scheduler'][1]}" in seen, seen
    for address in seen:
        host, port = address.rsplit(":", 1)
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect((host, int(port)))


def the_run(workspace):
    c = tracking.client()
    runs = c.search_runs([tracking.experiment_id(c, "lenet")])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return c, runs[0]


@pytest.mark.slow
def test_two_workers_train_one_run_like_one_process_with_their_total_batch(workspace):
    job = Job("lenet", "-n", "2", "--json", "data.batch_size=64", *LEARNS)
    seen: set[str] = set()
    while job.popen.poll() is None:   # every address any process of the job listens on, while it runs
        seen |= listening({pid for pid, _ in job.started().values()})
        time.sleep(0.3)
    code, out, err = job.finish(timeout=30)
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "FINISHED" and result["workers"] == 2 and result["hosts"] == "127.0.0.1"
    sums = result["params_sha256"]
    assert len(sums) == 2 and len(set(sums.values())) == 1, sums   # every worker holds the same network
    assert seen and all(a.startswith("127.0.0.1:") for a in seen), seen
    assert_nothing_left(job, seen)

    c, run = the_run(workspace)
    assert run.info.run_id == result["run_id"] and run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5]
    assert run.data.params["train.kvstore"] == "dist_sync" and run.data.params["data.batch_size"] == "64"
    assert run.data.params["launch.effective_batch_size"] == "128" and run.data.params["launch.workers"] == "2"
    assert float(run.data.params["launch.effective_lr"]) == 0.002   # the mean gradient of the job's total batch
    tags = run.data.tags
    assert (tags["mxlab.workers"], tags["mxlab.servers"], tags["mxlab.hosts"]) == ("2", "1", "127.0.0.1")
    assert tags["mxlab.workers_identical"] == "true"
    assert tags["mlflow.note.content"].startswith("mxlab launch lenet -n 2 --json")   # the notes: the launcher's
    assert {a.path for a in c.list_artifacts(run.info.run_id)} >= {"spec.yaml", "params", "checkpoint"}

    alone = mxlab.run("lenet", [*LEARNS, "data.batch_size=128"], track=False, progress=False)
    assert abs(result["metrics"]["test/acc"] - alone.metrics["test/acc"]) <= 0.02, (result["metrics"], alone.metrics)
    assert result["metrics"]["test/acc"] > 0.7   # it learned: the comparison is not between two coin tosses


def _started_and_training(job: Job, store: Path | None = None) -> tuple[dict, set[str]]:
    """Every process of the job, and every address they listen on, once both workers train: their first epoch
    printed, or with --json (no progress) logged in ``store``."""
    if store is None:
        job.wait_for(r"\[worker \d\] epoch 1/", timeout=150)
    else:
        job.wait_for(r"joined the job as rank 1", timeout=150)
        deadline = time.monotonic() + 150
        while not (store.exists() and _logged_epochs(store)):
            assert job.popen.poll() is None and time.monotonic() < deadline, "".join(job.lines)
            time.sleep(0.2)
    started = job.started()
    return started, listening({pid for pid, _ in started.values()})


def _logged_epochs(store: Path) -> int:
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return db.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss'").fetchone()[0]
    except sqlite3.OperationalError:   # the schema is still being created
        return 0


@pytest.mark.slow
def test_a_killed_worker_fails_the_job_and_leaves_nothing_behind(workspace):
    job = Job("lenet", "-n", "2", "--json", "data.limit=2048", "data.batch_size=64", "train.epochs=200")
    started, seen = _started_and_training(job, workspace / "mlruns" / "mlflow.db")
    rank1 = job.wait_for(r"\[(worker \d)\] joined the job as rank 1", timeout=5).group(1)
    os.kill(started[rank1][0], signal.SIGKILL)
    killed_at = time.monotonic()
    code, out, err = job.finish(timeout=60)
    assert time.monotonic() - killed_at < launch.GRACE + 20, err
    assert code == 1, err
    assert f"{rank1} (pid {started[rank1][0]}) was killed by SIGKILL" in err
    assert_nothing_left(job, seen)
    _, run = the_run(workspace)
    assert run.info.status == "FAILED" and "killed by SIGKILL" in run.data.tags["mxlab.error"]
    result = json.loads(out)   # --json reports a failed job too
    assert (result["run_id"], result["status"]) == (run.info.run_id, "FAILED") and "SIGKILL" in result["error"]


@pytest.mark.slow
def test_ctrl_c_stops_every_process_and_marks_the_run_killed(workspace, tmp_path, monkeypatch):
    # --hosts through an `ssh` that runs the remote command here: the command line a host gets, for real.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/ssh.log\n'
                                 'while [ $# -gt 1 ]; do shift; done\nexec /bin/sh -c "$1"\n')
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (tmp_path / "hosts").write_text("127.0.0.1\n")
    job = Job("lenet", "-n", "2", "--hosts", str(tmp_path / "hosts"), "data.limit=2048", "data.batch_size=64",
              "train.epochs=200")
    _, seen = _started_and_training(job)
    os.killpg(job.popen.pid, signal.SIGINT)   # what the terminal sends to its foreground job
    code, _, err = job.finish(timeout=60)
    assert code == 130, err
    assert "stopped by SIGINT" in err
    assert_nothing_left(job, seen)
    ssh = (tmp_path / "ssh.log").read_text().splitlines()
    assert len(ssh) == 3 and all(line.startswith("-o BatchMode=yes -p 22 127.0.0.1 cd ") for line in ssh), ssh
    _, run = the_run(workspace)
    assert run.info.status == "KILLED" and run.data.tags["mxlab.hosts"] == "127.0.0.1"
