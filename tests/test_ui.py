"""`mxlab ui` serves the workspace store on 127.0.0.1, and every run is there."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from mxlab import tracking
from mxlab.spec import load_spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    result = tracking.run_experiment(load_spec("linreg", ["train.epochs=1"]), progress=False)
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
