"""The two web servers mxlab starts for a person: MLflow's UI and optuna-dashboard, on 127.0.0.1 only.

Both stop whole on Ctrl-C, SIGTERM and SIGHUP: MLflow's server runs in its own process group (uvicorn and its
workers), which is terminated as a group, so nothing is left listening. Store URLs reach the server through
its environment, never its command line (``ps`` shows command lines). The dashboard answers only requests
whose Host header names the loopback address it serves, so a web page cannot reach it by DNS rebinding.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from mxlab.interrupts import stops_as_exceptions, stops_deferred

LOOPBACK = "127.0.0.1"
STOP_GRACE_SECONDS = 10


def loopback_hosts(port: int) -> set[str]:
    """Host header values a browser sends for this server on this machine."""
    return {f"{name}:{port}" for name in (LOOPBACK, "localhost", "[::1]")} | {LOOPBACK, "localhost", "[::1]"}


def mlflow_ui(uri: str, port: int, artifact_root: Path | None) -> int:
    """``mlflow ui`` on ``uri`` until a stop signal; returns its exit code (the signal's re-raised)."""
    env = dict(os.environ)
    env["MLFLOW_BACKEND_STORE_URI"] = uri   # the password, if any, stays out of the process list
    # One worker and no GenAI job runners: a laptop's UI, not a team's server (0.5 GB against 3.3 GB here).
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = [sys.executable, "-m", "mlflow", "ui", "--host", LOOPBACK, "--port", str(port), "--workers", "1",
               "--allowed-hosts", ",".join(sorted(loopback_hosts(port)))]
    if artifact_root is not None:
        command += ["--default-artifact-root", artifact_root.as_uri()]
    return run_group(command, env)


def run_group(command: list[str], env: dict) -> int:
    """Run ``command`` in a process group of its own; a stop signal here stops the whole group, then re-raises."""
    proc = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        with stops_as_exceptions():
            return proc.wait()
    except KeyboardInterrupt:
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
