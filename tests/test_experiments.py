"""Every experiment folder validates and trains one short step on tiny data, recorded in MLflow."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from mxlab import tracking
from mxlab import runner
from mxlab.spec import load_spec
from mxlab.workspace import experiment_names

# Shrink, never copy: the real spec with a small slice of its data and one epoch.
TINY = {
    "language_model": ["train.epochs=1", "data.limit=2000", "data.batch_size=4"],
    "classification": ["train.epochs=1", "data.limit=32", "data.batch_size=16"],
    "regression": ["train.epochs=1", "data.limit=32"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", experiment_names())
def test_experiment_trains_one_short_step(workspace, name):
    spec = load_spec(name)
    spec = load_spec(name, TINY[spec.task])
    result = runner.run(spec, progress=False)
    assert result.status == "FINISHED"
    assert math.isfinite(result.metrics["train/loss"])
    run = tracking.client().get_run(result.run_id)
    assert run.info.status == "FINISHED" and "train/loss" in run.data.metrics


@pytest.mark.slow
def test_list_prints_a_table_of_every_experiment_without_loading_mxnet_or_mlflow(workspace):
    # Listing reads the YAML files only: no MXNet, MLflow or Optuna, so it answers at once.
    probe = ("import sys; from mxlab import cli; code = cli.main(['list']); "
             "print('loaded:', *sorted(m for m in ('mxnet', 'mlflow', 'optuna') if m in sys.modules)); sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "loaded:"
    assert lines[0].split() == ["name", "model", "dataset", "presets", "description"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:-1]}
    assert set(rows) == set(experiment_names())
    assert rows["lenet"][:2] == ["lenet", "fashion_mnist"]


@pytest.mark.slow
def test_check_passes_on_all_and_fails_on_a_broken_one(tmp_path, monkeypatch):
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "check"], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok ") == len(experiment_names())

    (tmp_path / "experiments" / "broken").mkdir(parents=True)
    (tmp_path / "experiments" / "broken" / "experiment.yaml").write_text(
        "model: {name: lenet}\ndata: {name: fashion_mnist}\ntrain: {lr: fast}\n")
    monkeypatch.setenv("MXLAB_ROOT", str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "check", "broken"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert "train.lr: got 'fast'; allowed: a finite number" in out.stdout


@pytest.mark.slow
def test_run_of_unknown_experiment_lists_known(workspace):
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "lenett"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "unknown experiment 'lenett'" in out.stderr and "lenet" in out.stderr
