"""MLflow only: the store, a run's lifecycle, the logger callback and the artifact writers.

Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlruns/mlflow.db`` with artifacts under
``<root>/mlruns/artifacts``. One MLflow experiment per experiment folder. A run ends FINISHED, FAILED
(an exception or a non-finite loss) or KILLED (Ctrl-C, SIGTERM): never RUNNING. This module knows nothing of
the fit loop or the data: the runner hands it what to record.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import warnings
from pathlib import Path

from mxlab import workspace
from mxlab.callbacks import Callback
from mxlab.interrupts import Terminated, sigterm_as_exception, sigterm_deferred

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"   # MLflow 3's UI then opens the experiment on its training runs


def tracking_uri(root: Path | None = None) -> str:
    return workspace.mlflow_uri(root)


def artifact_location(experiment_name: str, root: Path | None = None) -> str | None:
    """Local artifacts for the embedded store; a tracking server chooses its own."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (workspace.mlflow_artifact_root(root) / experiment_name).as_uri()


def client(root: Path | None = None):
    """An ``MlflowClient`` on the workspace store, whose schema is created once, under a file lock, first."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    if uri.startswith("sqlite:"):
        with workspace.file_lock(workspace.store_dir(root) / ".lock"):
            c = MlflowClient(uri)
            c.search_experiments(max_results=1)   # creates or migrates the schema, once, before any worker
        return c
    return MlflowClient(uri)


def experiment_id(c, name: str, root: Path | None = None) -> str:
    """The MLflow experiment named like the experiment folder, created (and tagged) on first use."""
    from mlflow.exceptions import MlflowException

    found = c.get_experiment_by_name(name)
    if found is None:
        try:
            exp_id = c.create_experiment(name, artifact_location=artifact_location(name, root),
                                         tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            return exp_id
        except MlflowException:       # another worker created it first
            found = c.get_experiment_by_name(name)
            if found is None:
                raise
    if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return found.experiment_id


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags(spec, device_tags: dict, checksums: dict, root: Path | None = None) -> dict[str, str]:
    """What identifies a run beyond its params: experiment, code version, devices, data, host and process."""
    # The commit of the repository that holds the experiment folder (a workspace may link to it).
    source = Path(spec.path).resolve().parent if spec.path else (root or workspace.root())
    tags = {
        "mxlab.experiment": spec.name,
        "mxlab.task": spec.task,
        "mxlab.model": spec.model.name,
        "mxlab.dataset": spec.data.name,
        "host": socket.gethostname(),
        "mxlab.pid": str(os.getpid()),
        **device_tags,
        **checksums,
    }
    commit = _git(source, "rev-parse", "HEAD")
    if commit:
        status = _git(source, "status", "--porcelain")
        tags.update({"git.commit": commit, "mlflow.source.git.commit": commit,
                     "git.dirty": str(bool(status)).lower()})
    return tags


def set_tags(c, run_id: str, tags: dict) -> None:
    from mlflow.entities import RunTag

    c.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_params(c, run_id: str, spec) -> None:
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in sorted(spec.flat().items())]
    for start in range(0, len(params), 100):
        c.log_batch(run_id, params=params[start:start + 100])


@contextlib.contextmanager
def run_lifecycle(c, run_id: str):
    """Ends the run FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM), whatever happens inside."""
    status = "FAILED"
    try:
        with sigterm_as_exception():
            yield
        status = "FINISHED"
    except (KeyboardInterrupt, Terminated):
        status = "KILLED"
        raise
    except BaseException as exc:
        with contextlib.suppress(Exception):
            c.set_tag(run_id, "mxlab.error", f"{type(exc).__name__}: {exc}"[:5000])
        raise
    finally:
        with sigterm_deferred():   # signals must not interrupt the status write itself
            c.set_terminated(run_id, status)


class MLflowLogger(Callback):
    """Logs each epoch's metrics (``step`` = epoch) and the checkpoint files to an MLflow run as they happen."""

    def __init__(self, client, run_id: str, checkpoint_dir: Path | None = None):
        self.client, self.run_id, self.checkpoint_dir = client, run_id, checkpoint_dir

    def on_epoch_end(self, state, metrics):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, state.epoch) for key, value in metrics.items()])
        if self.checkpoint_dir is not None:
            for name in ("last.params", "last.states", "last.json"):
                self.client.log_artifact(self.run_id, str(self.checkpoint_dir / name), "checkpoint")


def start_run(spec, *, tags: dict | None = None, parent_run_id: str | None = None, run_name: str | None = None,
              root: Path | None = None):
    """A new MLflow run of ``spec``'s experiment; returns ``(client, run_id)``."""
    c = client(root)
    exp_id = experiment_id(c, spec.name, root)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    return c, run.info.run_id


def log_files(c, run_id: str, folder: Path, names, artifact_path: str | None = None) -> None:
    for name in names:
        if (folder / name).exists():
            c.log_artifact(run_id, str(folder / name), artifact_path)


def log_pyfunc_model(c, run_id: str, folder: Path, artifacts: dict) -> None:
    """An MLflow pyfunc model under ``model/`` from files the runner wrote (a symbol and its params, or a spec,
    params and the experiment's own ``model.py``); :mod:`mxlab.pyfunc_model` reloads them for prediction."""
    import mlflow.pyfunc

    model_dir = folder / "model"
    # MLflow warns (and forces the warning on) that `predict` has no type hints: inputs are arrays of any
    # shape here, with no schema to give. Recording the warnings keeps them off the console.
    with warnings.catch_warnings(record=True):
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts={k: str(v) for k, v in artifacts.items()})
    c.log_artifacts(run_id, str(model_dir), "model")
