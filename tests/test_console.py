"""What a run prints: plain lines off a terminal, a bar on one, a short summary, library noise kept off."""
from __future__ import annotations

import pytest

import io
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

from mxlab import console
from mxlab.runner import RunResult


def state(epoch=1, epochs=3, batch_size=100, loss=0.4321):
    spec = SimpleNamespace(train=SimpleNamespace(epochs=epochs), data=SimpleNamespace(batch_size=batch_size))
    return SimpleNamespace(spec=spec, epoch=epoch, running_loss=lambda: loss)


def test_plain_lines_off_a_terminal(monkeypatch):
    stream = io.StringIO()
    progress = console.ConsoleProgress(stream)
    assert progress.bar is False
    monkeypatch.setattr(console, "PLAIN_EVERY", 0.0)   # a long epoch: a line with rate and time left
    for batch in range(1, 4):
        progress.on_batch_end(state(), batch, 3)
    progress.on_epoch_end(state(), {"train/loss": 0.123456, "test/acc": 0.87654, "perf/epoch_seconds": 75.2,
                                    "perf/samples_per_second": 12345.6})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/3  batch 1/3  loss 0.4321") and "ex/s" in lines[0]
    assert "left in this epoch" in lines[0]
    assert lines[-1] == "epoch 1/3  train/loss 0.1235  test/acc 0.8765  1m15s  12,346 ex/s"
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_a_bar_on_a_terminal():
    stream = io.StringIO()
    progress = console.ConsoleProgress(stream, bar=True)
    for batch in range(1, 6):
        progress.on_batch_end(state(2, 5), batch, 5)
    progress.on_epoch_end(state(2, 5), {"train/loss": 0.5})
    out = stream.getvalue()
    assert "epoch 2/5" in out and "5/5" in out and "ex/s" in out and "\r" in out
    assert "loss 0.4321" in out   # the running loss, read from the devices a few times a second
    assert out.rstrip().endswith("epoch 2/5  train/loss 0.5")


def test_summary_is_short_and_readable():
    result = RunResult("abc123", "lenet", "FINISHED", [{"epoch": 1, "train/loss": 0.5}, {
        "epoch": 2, "train/loss": 0.3333333333, "test/acc": 0.87123456, "perf/epoch_seconds": 3.0}])
    assert console.summary(result, 125) == ("run abc123 FINISHED: 2 epochs in 2m05s\n"
                                            "  test/acc 0.8712  train/loss 0.3333")


def test_ui_url_points_at_the_server_or_at_mxlab_ui():
    assert console.ui_url("http://mlflow:5000/", "3", "r1") == "http://mlflow:5000/#/experiments/3/runs/r1"
    assert console.ui_url("sqlite:///x.db", "3", "r1") == "http://127.0.0.1:5000/#/experiments/3/runs/r1"


def test_library_logging_and_warnings_are_quiet(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    for name in ("MXLAB_DEBUG", "PYTHONWARNINGS", "MLFLOW_LOGGING_LEVEL"):   # restored after the test
        monkeypatch.delenv(name, raising=False)
    console.quiet_libraries()
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING" and os.environ["PYTHONWARNINGS"] == "ignore"
    assert logging.getLogger("mlflow").getEffectiveLevel() >= logging.WARNING


@pytest.mark.slow
def test_cli_run_shows_progress_and_a_summary_and_keeps_json_alone(workspace):
    plain = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "linreg", "train.epochs=2"],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("run ") and " FINISHED: 2 epochs in " in plain.stdout
    assert "train/loss" in plain.stdout.splitlines()[1]
    err = plain.stderr
    assert err.startswith("run ") and "/#/experiments/" in err and "epoch 2/2" in err
    lines = err.splitlines()   # no silent seconds before the first epoch or after the last
    assert lines[2].startswith("  loading ") and lines[-1].startswith("  saving "), err
    assert "INFO" not in err and "Warning" not in err   # nothing from MLflow's own logging
    as_json = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "linreg", "train.epochs=2", "--json",
                              "--name", "my run"], capture_output=True, text=True, timeout=300)
    assert as_json.returncode == 0 and as_json.stdout.count("\n") == 1 and "epoch 2/2" in as_json.stderr
    import json

    from mxlab import tracking

    run_id = json.loads(as_json.stdout)["run_id"]
    assert tracking.client().get_run(run_id).info.run_name == "my run"
