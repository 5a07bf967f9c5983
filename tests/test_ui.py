"""`mxlab ui` serves the workspace store on 127.0.0.1, and every run is there."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from mxlab import runner, tracking
from mxlab.spec import load_spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(url: str) -> str:
    """The page's DOM after its scripts ran, from headless Chromium (Debian's package, installed by .ci/run)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port``, from /proc/net/tcp (state 0A is LISTEN)."""
    found = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_ui_serves_the_runs(workspace):
    result = runner.run(load_spec("linreg", ["train.epochs=1"]), progress=False)
    run_name = tracking.client().get_run(result.run_id).info.run_name
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mxlab.cli", "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy(),
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        runs_page = proc.stdout.readline()
        exp_id = tracking.client().get_experiment_by_name("linreg").experiment_id
        assert f"#/experiments/{exp_id}/runs" in runs_page
        body = json.dumps({"experiment_ids": [exp_id]}).encode()
        deadline = time.time() + 90   # the UI takes 10-20 s to answer on 2 cores
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    runs = json.loads(response.read())["runs"]
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "the MLflow UI did not answer"
                time.sleep(1)
        assert [r["info"]["run_id"] for r in runs] == [result.run_id]
        assert runs[0]["info"]["status"] == "FINISHED"
        assert listening_addresses(port) == {"127.0.0.1"}
        # What a researcher sees: the runs page, rendered by a real browser, opens on the training runs.
        dom = render(runs_page.split()[-1])
        assert "Training runs" in dom and run_name in dom
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
