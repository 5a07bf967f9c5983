"""Shared fixtures: every test gets its own workspace (stores under a temp folder) over the real experiments."""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mxlab import compat

compat.apply()   # some tests import mxnet directly; on Python 3.12+ it needs the compatibility layer first

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a child that tests send Ctrl-C: SIGINT as a terminal's foreground job has it. A shell's
    background job (CI runs its suites side by side) starts with SIGINT ignored, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def live_processes() -> dict[int, tuple[int, int]]:
    """``pid: (parent pid, process group)`` of every process that has not exited (zombies aside), from /proc."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:   # the command name, in parentheses, may hold spaces: the fields that follow come after its ")"
            state, ppid, pgid = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):   # it exited while being read
            continue
        if state != "Z":
            found[int(stat.parent.name)] = (int(ppid), int(pgid))
    return found


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json_until_answered(url: str, body: bytes, proc, timeout: float, what: str, pause: float = 1.0):
    """POST ``body`` to a server that ``proc`` is still starting, until it answers; returns the decoded reply."""
    deadline = time.time() + timeout
    while True:
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{what} did not answer"
            time.sleep(pause)


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A workspace whose ``experiments/`` is the repository's and whose ``mlruns/`` is fresh."""
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "experiments").symlink_to(REPO / "experiments")
    monkeypatch.setenv("MXLAB_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MXLAB_OPTUNA_STORAGE", raising=False)
    return root


@pytest.fixture(autouse=True)
def fresh_mlflow_uri():
    """A test that points MLflow's process-wide store at its workspace must not leave it there for the next."""
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._tracking_service import utils

        utils._tracking_uri = None   # the environment is the monkeypatch's to restore
