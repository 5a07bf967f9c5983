"""The servers mxlab starts stop whole on any stop signal, keep the store's password off the process list, and
the dashboard answers only its own loopback name (no DNS rebinding)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from mxlab import servers
from tests.conftest import as_from_a_terminal, free_port, live_processes


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until_answers(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return   # it answered
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    children = {}
    for child, (parent, _group) in live_processes().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    return pid in live_processes()


def test_the_ui_gets_the_store_through_its_environment_not_its_command_line(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(servers, "run_group",
                        lambda command, env, while_starting=None: seen.update(command=command, env=env) or 0)
    uri = "postgresql://mxlab:pw-s3cret@db.lab:5432/mlflow"
    assert servers.mlflow_ui(uri, 5123, tmp_path) == 0
    assert not any("pw-s3cret" in part for part in seen["command"])
    assert seen["env"]["MLFLOW_BACKEND_STORE_URI"] == uri
    assert seen["command"][seen["command"].index("--host") + 1] == "127.0.0.1"


def test_the_ui_of_a_tracking_server_is_that_server(monkeypatch, capsys):
    from mxlab.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.lab:5000")
    monkeypatch.setattr(servers, "run_group", lambda *a, **k: pytest.fail("no server of its own"))
    assert main(["ui"]) == 0
    assert "http://mlflow.lab:5000 (the tracking server in MLFLOW_TRACKING_URI serves it)" in capsys.readouterr().out


def test_a_failure_while_the_server_starts_stops_the_server():
    """mxlab ui opens the store while MLflow's server starts: if that fails, no server is left behind."""
    started = {}

    def fail():
        started["pid"] = next(pid for pid in descendants(os.getpid()) if alive(pid))
        raise RuntimeError("the store is corrupt")

    with pytest.raises(RuntimeError, match="corrupt"):
        servers.run_group([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ), fail)
    assert not alive(started["pid"])


def test_the_ui_server_is_started_as_mlflow_s_own_cli_would_start_it(monkeypatch, tmp_path):
    """mxlab starts MLflow's uvicorn server itself (one process less): its command and settings are what
    `mlflow ui` computes for the same options, read from MLflow's CLI with its final step intercepted."""
    import mlflow.cli
    import mlflow.server

    class Started(Exception):
        pass

    def intercept(command, extra_env=None, **_):
        seen.update(command=command, env={**os.environ, **extra_env})
        raise Started

    uri, port, artifacts = f"sqlite:///{tmp_path / 'mlflow.db'}", 5123, tmp_path / "artifacts"
    seen = {}
    monkeypatch.setattr(mlflow.server, "_exec_cmd", intercept)
    saved = dict(os.environ)   # MLflow's CLI writes settings into this process's environment
    try:
        for key in [k for k in os.environ if "MLFLOW" in k]:
            del os.environ[key]
        os.environ.update(MLFLOW_BACKEND_STORE_URI=uri, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with pytest.raises(Started):
            mlflow.cli.cli.main(["ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                 "--allowed-hosts", ",".join(sorted(servers.loopback_hosts(port))),
                                 "--default-artifact-root", artifacts.as_uri(),
                                 "--artifacts-destination", artifacts.as_uri()], standalone_mode=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    command, settings = servers.mlflow_server(uri, port, artifacts)
    assert command == seen["command"]
    theirs = {k: v for k, v in seen["env"].items() if "MLFLOW" in k and k != "_MLFLOW_SERVER_BOOT_ID"}
    ours = {k: v for k, v in settings.items() if k != "_MLFLOW_SERVER_BOOT_ID"}
    assert ours == theirs


PROBE_APP = """
import gc, json

ENABLED_WHILE_IMPORTED = gc.isenabled()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    seen = {"while_imported": ENABLED_WHILE_IMPORTED, "serving": gc.isenabled(), "frozen": gc.get_freeze_count()}
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})
"""


def test_the_ui_s_server_imports_its_app_with_the_collector_held_then_collects_as_usual(tmp_path):
    (tmp_path / "probe_app.py").write_text(PROBE_APP)
    port = free_port()
    command = servers.app_imported_first([sys.executable, "-m", "uvicorn", "--host", servers.LOOPBACK, "--port",
                                          str(port), "--workers", "1", "probe_app:app"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            seen = json.loads(page.read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert seen["while_imported"] is False and seen["serving"] is True and seen["frozen"] > 0
    with pytest.raises(ValueError, match="not a uvicorn command"):
        servers.app_imported_first([sys.executable, "-m", "gunicorn", "probe_app:app"])


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_mxlab_ui_stops_its_whole_server_on_any_stop(workspace, sig):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mxlab.cli", "ui", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/health", proc)
        children = descendants(proc.pid)
        assert children   # MLflow's server and its workers, in a process group of their own
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig
        deadline = time.monotonic() + 20
        while listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not listening(port)
        assert [pid for pid in children if alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_the_dashboard_refuses_foreign_host_headers_and_stops_on_any_stop(workspace, sig):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mxlab.cli", "dashboard", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/", proc)
        for host, expected in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200),
                               (f"attacker.example:{port}", 403), ("attacker.example", 403)):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            assert status == expected, host
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig and not listening(port), err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
