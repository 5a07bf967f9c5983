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

import pytest

from mxlab import runner, tracking
from mxlab.spec import load_spec
from tests.conftest import free_port, live_processes, post_json_until_answered

pytestmark = pytest.mark.slow   # servers and a browser: `make test`, not test-fast


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
        # The UI takes 10-20 s to answer on 2 cores.
        runs = post_json_until_answered(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", body, proc, 90,
                                        "the MLflow UI")["runs"]
        assert [r["info"]["run_id"] for r in runs] == [result.run_id]
        assert runs[0]["info"]["status"] == "FINISHED"
        assert listening_addresses(port) == {"127.0.0.1"}
        # What a researcher sees: the runs page, rendered by a real browser, opens on the training runs.
        dom = render(runs_page.split()[-1])
        assert "Training runs" in dom and run_name in dom
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def screenshot(url: str, path) -> bytes:
    """A PNG of the page after its scripts ran, from headless Chromium; returns its bytes."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--window-size=1400,900",
             f"--screenshot={path}", url], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000   # a rendered page, not a blank one
    return data


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (it reads fd 3, writes fd 4: JSON messages
    ending in NUL), so a test can click before it takes a picture; no websocket library needed."""

    def __init__(self, profile: str, width: int = 1400, height: int = 900):
        to_chrome, self._in = os.pipe()
        self._out, from_chrome = os.pipe()

        def on_fds_3_and_4():
            a, b = os.dup(to_chrome), os.dup(from_chrome)   # out of the way of 3 and 4 first
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=on_fds_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self._session = b"", 0, None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def send(self, method: str, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        while True:   # events arrive in between: skip to our reply
            while b"\0" not in self._buffer:
                chunk = os.read(self._out, 1 << 20)
                assert chunk, "chromium closed its DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply["error"]
                return reply.get("result", {})

    def js(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            assert time.monotonic() < deadline, f"not within {timeout} s: {expression}"
            time.sleep(0.3)

    def png(self) -> bytes:
        import base64

        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        """Chromium and every helper process of it gone: they write into the profile until they exit, and a kill
        of the browser process alone once left a helper writing there while the profile was being removed."""
        self._session = None
        try:
            self.send("Browser.close")
        except AssertionError:   # it may close the pipe before it answers
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 30
        while live_in_group(self.proc.pid):
            assert time.monotonic() < deadline, f"chromium's processes outlived 30 s: {live_in_group(self.proc.pid)}"
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.1)
        self.proc.wait(timeout=30)
        os.close(self._in)
        os.close(self._out)


def live_in_group(pgid: int) -> list[int]:
    return [pid for pid, (_parent, group) in live_processes().items() if group == pgid]


def serve(command: list[str], url: str):
    proc = subprocess.Popen([sys.executable, "-m", "mxlab.cli", *command], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"{command[0]} did not answer"
            time.sleep(1)


def test_screenshots_of_a_study_in_the_mlflow_ui_and_in_optuna_dashboard(workspace, tmp_path):
    """What the README shows, taken anew: `MXLAB_SCREENSHOTS=docs/screenshots` keeps them there."""
    from mxlab.tuning import TuneOptions, tune

    result = tune("softmax", ["train.epochs=3", "data.limit=5000"], TuneOptions(trials=4, seed=0, progress=False))
    keep = os.environ.get("MXLAB_SCREENSHOTS")
    shots = {}
    port = free_port()
    ui = serve(["ui", "--port", str(port)], f"http://127.0.0.1:{port}/health")
    try:
        exp_id = tracking.client().get_experiment_by_name("softmax").experiment_id
        with tempfile.TemporaryDirectory() as profile:
            browser = Browser(profile)
            try:
                browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs")
                browser.wait_for("document.body.innerText.includes('study-softmax')")
                # Open the study's row to show its trials (the first button of the row is its expander), and
                # close the assistant panel MLflow opens beside the table.
                assert browser.js("""(() => {
                    const rows = [...document.querySelectorAll('[role=row]')];
                    const expander = rows.find(r => r.innerText.includes('study-softmax'))?.querySelector('button');
                    if (expander) expander.click();
                    const buttons = [...document.querySelectorAll('button')];
                    buttons.find(b => b.getAttribute('aria-label') === 'Close')?.click();
                    return Boolean(expander); })()""")
                browser.wait_for("(document.body.innerText.match(/trial-\\d+/g) || []).length === 4")
                time.sleep(1)   # the row icons settle
                shots["mlflow-study.png"] = browser.png()
            finally:
                browser.close()
        assert shots["mlflow-study.png"][:8] == b"\x89PNG\r\n\x1a\n" and len(shots["mlflow-study.png"]) > 20_000
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    port = free_port()
    board = serve(["dashboard", "--port", str(port)], f"http://127.0.0.1:{port}/api/studies")
    try:
        shots["optuna-dashboard.png"] = screenshot(f"http://127.0.0.1:{port}/dashboard/studies/1",
                                                   tmp_path / "optuna-dashboard.png")
    finally:
        os.killpg(board.pid, signal.SIGTERM)
        board.wait(timeout=30)
    assert result["n_trials"] == 4
    if keep:
        os.makedirs(keep, exist_ok=True)
        for name, data in shots.items():
            with open(os.path.join(keep, name), "wb") as out:
                out.write(data)
