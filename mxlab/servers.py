"""The two web servers mxlab starts for a person: MLflow's UI and optuna-dashboard, on 127.0.0.1 only.

Both stop whole on Ctrl-C, SIGTERM and SIGHUP: MLflow's server runs in its own process group, which is terminated
as a group, so nothing is left listening. Store URLs reach the server through its environment, never its command
line (``ps`` shows command lines). The dashboard answers only requests whose Host header names the loopback
address it serves, so a web page cannot reach it by DNS rebinding.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from mxlab.interrupts import stops_as_exceptions, stops_deferred

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 10


def loopback_hosts(port: int) -> set[str]:
    """Host header values a browser sends for this server on this machine."""
    return {f"{name}:{port}" for name in (LOOPBACK, "localhost", "[::1]")} | {LOOPBACK, "localhost", "[::1]"}


def mlflow_ui(uri: str, port: int, artifact_root: Path, while_starting=None) -> int:
    """MLflow's tracking server and UI on ``uri`` until a stop signal; returns its exit code (the signal's
    re-raised). The uvicorn process that ``mlflow ui`` would start, started directly: one process, not two.
    ``while_starting`` runs here while the server starts."""
    command, settings = mlflow_server(uri, port, artifact_root)
    return run_group(app_imported_first(command), {**os.environ, **settings}, while_starting)


def app_imported_first(command: list[str]) -> list[str]:
    """``python -m uvicorn ... APP`` as ``python -m mxlab.servers ... APP``: the same server, whose app module is
    imported before uvicorn starts, with the collector held (:mod:`mxlab.heap`). MLflow's server imports some
    300,000 objects, and the collections that import set off took a third of the time until the UI answered."""
    if command[1:3] != ["-m", "uvicorn"]:
        raise ValueError(f"not a uvicorn command: {command}")
    return [command[0], "-m", "mxlab.servers", *command[3:]]


def mlflow_server(uri: str, port: int, artifact_root: Path) -> tuple[list[str], dict]:
    """The command and settings of the server that ``mlflow ui --workers 1`` runs, for a laptop rather than a
    team: one uvicorn worker, no GenAI job runners, answering the loopback names only.

    ``mlflow ui`` is a process that sets these (its CLI writes some into its own environment and hands the others
    to the server) and then waits for the server: 0.25 GB and two seconds for nothing. MLflow's server reads its
    settings from the environment when it starts, so the store's URL (and password) never reach ``ps``.
    tests/test_servers.py checks them against what MLflow's own CLI computes.
    """
    server_dir = Path(importlib.util.find_spec("mlflow.server").origin).parent
    root = artifact_root.as_uri()
    settings = {
        # what the CLI puts in its own environment
        "MLFLOW_BACKEND_STORE_URI": uri, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri,
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(sorted(loopback_hosts(port))),
        "MLFLOW_SERVER_X_FRAME_OPTIONS": "SAMEORIGIN", "MLFLOW_ENABLE_WORKSPACES": "false",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",   # no GenAI job runners (3.3 GB with them here)
        # what it hands the server (mlflow.server._run_server)
        "_MLFLOW_SERVER_FILE_STORE": uri, "_MLFLOW_SERVER_REGISTRY_STORE": uri,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": root, "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": root,   # never ./mlartifacts in whatever folder this ran from
        "MLFLOW_SERVER_SECRETS_CACHE_TTL": "60", "MLFLOW_SERVER_SECRETS_CACHE_MAX_SIZE": "1000",
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex, "_MLFLOW_IN_JOB_EXECUTOR": "false", "_MLFLOW_SGI_NAME": "uvicorn",
    }
    command = [sys.executable, "-m", "uvicorn", "--log-config", str(server_dir / "uvicorn_log_config.yaml"),
               "--host", LOOPBACK, "--port", str(port), "--workers", "1", "mlflow.server.fastapi_app:app"]
    return command, settings


def run_group(command: list[str], env: dict, while_starting=None) -> int:
    """Run ``command`` in a process group of its own, and ``while_starting`` meanwhile; a stop signal or an
    error here stops the whole group, then re-raises."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        with stops_as_exceptions():
            if while_starting is not None:
                while_starting()
            return proc.wait()
    except BaseException:
        stop_group(proc)
        raise


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole group, then SIGKILL to whatever of it is left after the grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def guard_host(app, port: int):
    """A WSGI app that refuses (403) any request whose Host header is not this server's loopback name."""
    allowed = loopback_hosts(port)

    def guarded(environ, start_response):
        host = environ.get("HTTP_HOST", "")
        if host not in allowed:
            body = f"Host {host!r} is not allowed; this server answers {LOOPBACK}:{port} only\n".encode()
            start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return guarded


def dashboard(storage, port: int) -> None:
    """optuna-dashboard on ``storage`` (an Optuna storage object) until a stop signal."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format, *args):   # one line per request is noise on a researcher's console
            pass

    server = make_server(LOOPBACK, port, guard_host(wsgi(storage), port), handler_class=QuietHandler)
    server.timeout = 0.5   # how often the loop looks for a stop signal between requests
    # A signal is held, not raised: raised inside a request, wsgiref's error handler would swallow it and the
    # server would go on. The loop ends, the socket closes, then the signal is delivered as a stop.
    try:
        with stops_as_exceptions(), stops_deferred() as arrived:
            while not arrived:
                server.handle_request()
    finally:
        server.server_close()


if __name__ == "__main__":   # app_imported_first's server: uvicorn's own command line, its app (the last word) set up
    from mxlab import heap

    with heap.held():
        importlib.import_module(sys.argv[-1].partition(":")[0])
    from uvicorn.main import main

    main()   # uvicorn reads its options from sys.argv and imports the app again: from sys.modules now
