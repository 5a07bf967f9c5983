"""Each run's MLflow 3 LoggedModel: signature, input example, written requirements, the input layouts it
accepts, and MLflow's own CLI (`mlflow models predict`, `mlflow models serve`) answering its input example."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mxlab import runner, tracking
from mxlab.cli import main
from mxlab.packaging import CLASS_NAMES
from mxlab.spec import load_spec
from tests.conftest import free_port, post_json_until_answered

pytestmark = pytest.mark.slow   # logged models of tracked runs: `make test`, not test-fast

LABELS = CLASS_NAMES["fashion_mnist"]


def train(name: str, *overrides: str):
    """A tracked run, and its logged model; MLflow's own APIs below (models:/ URIs) read the workspace's store,
    as they would after `eval "$(mxlab env)"` (conftest puts the process-wide URI back after the test)."""
    result = runner.run(load_spec(name, list(overrides)), progress=False)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    c = tracking.client()
    (output,) = c.get_run(result.run_id).outputs.model_outputs
    return result, c.get_logged_model(output.model_id)


def mxlab_env(capsys) -> dict:
    """What `eval "$(mxlab env)"` puts in a shell's environment."""
    assert main(["env"]) == 0
    env = dict(os.environ)
    for line in capsys.readouterr().out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env


def test_image_model_is_a_logged_model_with_signature_example_and_written_requirements(workspace):
    result, model = train("lenet", "train.epochs=1", "data.limit=600")
    assert model.source_run_id == result.run_id and model.name == "model"
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    outputs = [c["name"] for c in info.signature.outputs.to_dict()]
    assert outputs == ["class_id", "label", *[f"prob_{label}" for label in LABELS]]
    assert info.saved_input_example_info["type"] == "ndarray"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model.model_id}"))
    requirements = (local / "requirements.txt").read_text()
    assert "mxnet==1.9.1" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    example = json.loads((local / "serving_input_example.json").read_text())["inputs"]
    assert np.asarray(example).shape == (2, 784)   # the natural form: N x H*W, 0-255


def test_image_model_accepts_every_layout_and_range(workspace):
    result, model = train("softmax", "train.epochs=1", "data.limit=600")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    images = np.random.RandomState(0).randint(0, 256, (3, 28, 28)).astype(np.uint8)
    reference = pyfunc.predict(images.reshape(3, 784))
    assert list(reference.columns[:2]) == ["class_id", "label"] and len(reference.columns) == 12
    assert set(reference["label"]) <= set(LABELS)
    np.testing.assert_allclose(reference.filter(like="prob_").sum(axis=1), 1.0, rtol=1e-5)
    for variant in (images, images[:, None], images.astype(np.float32) / 255, images.reshape(3, 784).astype(np.int64)):
        frame = pyfunc.predict(variant)
        np.testing.assert_allclose(frame.filter(like="prob_"), reference.filter(like="prob_"), rtol=1e-4, atol=1e-6)
    bigger = pyfunc.predict(np.kron(images, np.ones((2, 2), dtype=np.uint8)))   # 56 x 56: resized to 28 x 28
    assert bigger.shape == reference.shape
    with pytest.raises(Exception, match="no square image"):
        pyfunc.predict(np.zeros((2, 700)))


def test_language_model_takes_prefixes_and_returns_text(workspace):
    result, model = train("rnn_scratch", "train.epochs=1", "data.limit=3000", "data.batch_size=4",
                          "train.sample_every=0")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["prefix", "text"]
    vocab = pyfunc.unwrap_python_model().card["vocab"]
    frame = pyfunc.predict([vocab[3], vocab[4] + vocab[5]], params={"length": 7})
    assert [len(t) for t in frame["text"]] == [8, 9] and frame["text"][1].startswith(vocab[4] + vocab[5])


def test_mlflow_models_predict_answers_the_input_example(workspace, capsys, tmp_path):
    result, model = train("lenet", "train.epochs=1", "data.limit=600")
    env = mxlab_env(capsys)
    assert env["MLFLOW_TRACKING_URI"] == tracking.tracking_uri()
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp_path / "m")))
    out_file = tmp_path / "out.json"
    # runs:/ as a researcher types it, from another folder: `mxlab env` is what lets MLflow find the run.
    done = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", f"runs:/{result.run_id}/model",
                           "-i", str(local / "serving_input_example.json"), "-t", "json", "-o", str(out_file),
                           "--env-manager", "local"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads(out_file.read_text())["predictions"]
    assert len(predictions) == 2 and predictions[0]["label"] in LABELS
    assert not (tmp_path / "mlflow.db").exists()   # MLflow did not fall back to a store of its own


def test_mlflow_models_serve_answers_the_input_example(workspace, capsys, tmp_path):
    result, model = train("softmax", "train.epochs=1", "data.limit=600")
    env = mxlab_env(capsys)
    # MLflow starts `uvicorn` by name: the virtualenv's bin/ must be on PATH, as in an activated shell.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp_path / "m")))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model.model_id}",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        body = (local / "serving_input_example.json").read_bytes()
        predictions = post_json_until_answered(f"http://127.0.0.1:{port}/invocations", body, proc, 180,
                                               "mlflow models serve", pause=2)["predictions"]
        assert [p["label"] in LABELS for p in predictions] == [True, True]
        assert abs(sum(v for k, v in predictions[0].items() if k.startswith("prob_")) - 1) < 1e-5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
