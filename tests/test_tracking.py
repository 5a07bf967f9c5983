"""Runs recorded in MLflow: params, per-epoch metrics, tags, artifacts, status, and reload parity."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import mxnet as mx
import numpy as np
import pytest
import yaml

from mxlab import runner, tracking
from mxlab.data import load_data
from mxlab.models.rnn import predict_rnn
from mxlab.spec import from_dict, load_spec
from mxlab.tasks import tasks
from mxlab.train import build_net, evaluate
from tests.conftest import as_from_a_terminal

pytestmark = pytest.mark.slow   # tracked runs in subprocesses and MLflow stores: `make test`, not test-fast

CORE = {
    "linreg_scratch": ["train.epochs=1"],
    "linreg": ["train.epochs=1"],
    "softmax_scratch": ["train.epochs=1", "data.limit=600", "data.val_fraction=0.2"],
    "softmax": ["train.epochs=1", "data.limit=600"],
    "lenet": ["train.epochs=2", "data.limit=600", "data.val_fraction=0.2"],
}


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return out


@pytest.mark.parametrize("name", sorted(CORE))
def test_run_is_recorded(workspace, name):
    spec = load_spec(name, CORE[name])
    result = runner.run(spec, progress=False)
    client = tracking.client()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert tracking.tracking_uri() == f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == name
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location.startswith((workspace / "mlruns" / "artifacts").as_uri())
    assert experiment.tags["mlflow.note.content"] == spec.description   # the experiment's description
    # The name says what differs from experiment.yaml; the notes hold the command that made the run.
    assert run.info.run_name == " ".join([name, *sorted(CORE[name])])
    assert run.data.tags["mlflow.note.content"]
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert "training" in inputs and inputs["training"].name == f"{spec.data.name}-train"
    assert len(inputs["training"].digest) == 16 and json.loads(inputs["training"].profile)
    if spec.data.val_fraction:
        assert "validation" in inputs
    if spec.data.name == "fashion_mnist":   # the test split too, and where the files were read
        assert inputs["test"].name == "fashion_mnist-test" and inputs["test"].digest != inputs["training"].digest
        assert json.loads(inputs["training"].source)

    assert run.data.params == {k: str(v) for k, v in spec.flat().items()}
    tags = run.data.tags
    assert tags["devices"] == "cpu(0)" and tags["mxnet.version"] == mx.__version__
    assert tags["mxnet.cuda"] == "false" and tags["host"]
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    if spec.data.name == "fashion_mnist":
        assert tags["data.sha256.t10k-labels-idx1-ubyte"].startswith("0402a96d")

    expected = {"train/loss", "perf/epoch_seconds", "perf/samples_per_second"}
    if spec.task == "classification":
        expected |= {"train/acc", "test/loss", "test/acc"}
    if spec.data.val_fraction:
        expected |= {"val/loss"} | ({"val/acc"} if spec.task == "classification" else set())
    assert expected <= set(run.data.metrics) == set(result.metrics)
    loss_history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in loss_history] == list(range(1, spec.train.epochs + 1))
    assert loss_history[-1].value == pytest.approx(result.metrics["train/loss"])

    artifacts = set(artifact_paths(client, result.run_id))
    assert [o.model_id for o in run.outputs.model_outputs] == [client.get_logged_model(
        run.outputs.model_outputs[0].model_id).model_id]   # the run's LoggedModel
    assert {"spec.yaml", "params/final.params", "model_summary.txt", "curves.png",
            "checkpoint/last.params", "checkpoint/last.json"} <= artifacts
    if spec.data.val_fraction:
        assert "params/best.params" in artifacts
    local = Path(client.download_artifacts(result.run_id, "spec.yaml"))
    assert from_dict(name, yaml.safe_load(local.read_text())).to_dict() == spec.to_dict()


@pytest.mark.parametrize("name", ["lenet", "softmax_scratch"])
def test_final_params_and_pyfunc_reproduce_logged_test_accuracy(workspace, name):
    spec = load_spec(name, ["train.epochs=1", "data.limit=1000"])
    result = runner.run(spec, progress=False)
    client = tracking.client()
    params = client.download_artifacts(result.run_id, "params/final.params")

    bundle = load_data(spec, mx.cpu())
    net = build_net(spec, bundle)
    net.load_parameters(params, ctx=mx.cpu())
    metrics = evaluate(net, bundle.test, tasks.get(spec.task)(), [mx.cpu()])
    assert metrics["test/acc"] == pytest.approx(result.metrics["test/acc"], abs=1e-9)

    X, _ = next(iter(bundle.test))
    mlflow.set_tracking_uri(tracking.tracking_uri())
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    frame = model.predict(X.asnumpy())
    out = net(X)
    probs = out if name == "softmax_scratch" else mx.nd.softmax(out)   # the scratch model ends in a softmax
    np.testing.assert_allclose(frame.filter(like="prob_").to_numpy(), probs.asnumpy(), rtol=1e-4, atol=1e-6)
    assert (frame["class_id"].to_numpy() == out.argmax(axis=1).asnumpy()).all()


def test_cli_reports_a_non_finite_loss_in_one_line(workspace):
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "linreg_scratch", "train.lr=1e6"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "train/loss is" in out.stderr and "a lower train.lr" in out.stderr


def test_non_finite_loss_fails_the_run(workspace):
    spec = load_spec("linreg_scratch", ["train.lr=1e6"])
    with pytest.raises(FloatingPointError):
        runner.run(spec, progress=False)
    client = tracking.client()
    (run,) = client.search_runs([client.get_experiment_by_name("linreg_scratch").experiment_id])
    assert run.info.status == "FAILED"
    assert "non" in run.data.tags["mxlab.error"].lower() or "nan" in run.data.tags["mxlab.error"].lower()


def wait_for_epoch(client, experiment, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and "train/loss" in runs[0].data.metrics:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("no epoch was logged in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_the_run_killed_and_keeps_finished_epochs(workspace, sig, tmp_path):
    command = [sys.executable, "-m", "mxlab.cli", "run", "softmax", "train.epochs=500", "data.limit=2000"]
    # Output to a file, not a pipe nobody reads while it runs: a full pipe would block the process.
    err = open(tmp_path / "stderr.txt", "w+b")
    proc = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=as_from_a_terminal)
    try:
        client = tracking.client()
        run = wait_for_epoch(client, "softmax")
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    err.seek(0)
    assert "Traceback" not in err.read().decode()
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 1
    assert "checkpoint/last.params" in artifact_paths(client, run.info.run_id)


def test_cli_run_json_is_one_object(workspace):
    out = subprocess.run([sys.executable, "-m", "mxlab.cli", "run", "linreg", "train.epochs=2", "--json"],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert set(payload) == {"run_id", "experiment", "status", "metrics"}
    assert payload["experiment"] == "linreg" and payload["status"] == "FINISHED"
    assert set(payload["metrics"]) == {"train/loss", "l2_norm_w", "perf/epoch_seconds", "perf/samples_per_second"}
    run = tracking.client().get_run(payload["run_id"])
    assert run.data.metrics["train/loss"] == pytest.approx(payload["metrics"]["train/loss"])


def test_pyfunc_of_a_folder_model_loads_in_a_fresh_process(workspace):
    """custom_block's model is registered by its folder's model.py, which travels with the MLflow model."""
    result = runner.run(load_spec("custom_block", ["train.epochs=1", "data.limit=300"]), progress=False)
    code = ("import mlflow, numpy as np; mlflow.set_tracking_uri(%r); "
            "m = mlflow.pyfunc.load_model('runs:/%s/model'); print(m.predict(np.zeros((3, 1, 28, 28))).shape)"
            % (tracking.tracking_uri(), result.run_id))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=workspace.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(3, 12)"   # class_id, label, 10 probabilities


@pytest.mark.parametrize("name", ["gru", "rnn_scratch"])
def test_language_model_pyfunc_predicts_like_the_network(workspace, name):
    """A recurrent network takes its state too: the model is rebuilt from its spec, vocab_size included, and
    continues prefixes as the book's predict_rnn does."""
    spec = load_spec(name, ["train.epochs=1", "data.limit=3000", "data.batch_size=4", "train.sample_every=0"])
    result = runner.run(spec, progress=False)
    client = tracking.client()
    bundle = load_data(spec, mx.cpu())
    net = build_net(spec, bundle)
    net.load_parameters(client.download_artifacts(result.run_id, "params/final.params"), ctx=mx.cpu())
    mlflow.set_tracking_uri(tracking.tracking_uri())
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    idx_to_char, char_to_idx = bundle.extra["idx_to_char"], bundle.extra["char_to_idx"]
    prefixes = [idx_to_char[5], idx_to_char[7] + idx_to_char[9]]
    frame = model.predict(prefixes, params={"length": 12})
    expected = [predict_rnn(net, p, 12, idx_to_char, char_to_idx, mx.cpu()) for p in prefixes]
    assert list(frame["prefix"]) == prefixes and list(frame["text"]) == expected
    assert all(len(t) == len(p) + 12 for t, p in zip(frame["text"], prefixes))


def test_system_metrics_are_sampled_by_default_and_can_be_turned_off(workspace, monkeypatch):
    # A sample a second, each logged at once, so that a short run still gets some.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    spec = load_spec("lenet", ["train.epochs=3", "data.limit=6000", "train.device=cpu"])
    sampled = runner.run(spec, progress=False)
    keys = set(tracking.client().get_run(sampled.run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
    quiet = runner.run(spec.replace(**{"train.system_metrics": False}), progress=False)
    assert not [k for k in tracking.client().get_run(quiet.run_id).data.metrics if k.startswith("system/")]


def test_a_run_s_model_pins_are_checked_without_mapping_every_distribution(workspace, monkeypatch):
    """MLflow checks a logged model's pins against this environment, and first maps every installed distribution
    to its modules (0.2-0.3 s a process). mxlab's pins come from the distributions' metadata, so the check goes
    without the map; it still runs (a pin this environment lacks is reported), and MLflow's map is left as it
    was for anything else in the process."""
    import logging

    import importlib_metadata
    from mlflow.utils import requirements_utils

    from mxlab import logged_model

    mapped = []
    real_map = importlib_metadata.packages_distributions
    monkeypatch.setattr(importlib_metadata, "packages_distributions", lambda: mapped.append(1) or real_map())
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    pins = logged_model.pip_requirements()
    monkeypatch.setattr(logged_model, "pip_requirements", lambda: (*pins, "mxlab-no-such-distribution==1.0"))
    reported = []
    handler = logging.Handler()
    handler.emit = lambda record: reported.append(record.getMessage())
    logging.getLogger(requirements_utils.__name__).addHandler(handler)
    try:
        runner.run(load_spec("linreg", ["train.epochs=1"]), progress=False)
    finally:
        logging.getLogger(requirements_utils.__name__).removeHandler(handler)
    assert not mapped
    assert any("mxlab-no-such-distribution (current: uninstalled" in message for message in reported), reported
    assert requirements_utils._MODULES_TO_PACKAGES is None
