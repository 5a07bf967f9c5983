"""MLflow only: the store, a run's lifecycle, the logger callback and the artifact writers.

Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlruns/mlflow.db``. A sqlite store keeps its
artifacts beside it (``<folder of the .db>/artifacts/<experiment>``) and its schema lock too; a database server
without a tracking server gets the workspace's ``mlruns/artifacts``; a tracking server chooses its own. mxlab
never creates a store in the current folder. One MLflow experiment per experiment folder.

A run ends FINISHED, FAILED (an exception or a non-finite loss) or KILLED (Ctrl-C, SIGTERM, SIGHUP): never
RUNNING. Each run records its host, pid and the process's start time; a run whose process died without a word
(SIGKILL, power loss, out of memory) is closed KILLED by the next mxlab command that opens the store. This
module knows nothing of the fit loop or the data: the runner hands it what to record.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from mxlab import workspace
from mxlab.workspace import redact  # noqa: F401  (store URLs are printed redacted)
from mxlab.callbacks import Callback, Checkpoint
from mxlab.interrupts import signal_name, stops_as_exceptions, stops_deferred

# A dead tracking server fails within seconds, not after MLflow's default minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
TMP_PREFIX = "mxlab-"   # a run's temporary folder is mxlab-<run id>-...: a stale run's can be found and removed

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"   # MLflow 3's UI then opens the experiment on its training runs


class StoreError(RuntimeError):
    """The tracking store cannot be used as given; the message says what to do."""


@contextlib.contextmanager
def process_tracking_uri(uri: str):
    """MLflow's model APIs read the process-wide tracking URI, and setting it also sets MLFLOW_TRACKING_URI for
    the whole process: point both at ``uri`` for the duration only, then put them back, so that one workspace's
    store never leaks into the next call (a notebook, a test)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def tracking_uri(root: Path | None = None) -> str:
    uri = workspace.mlflow_uri(root)
    if uri.startswith("sqlite:") and not workspace.sqlite_path(uri).is_absolute():
        raise StoreError(f"MLFLOW_TRACKING_URI={uri} names a file relative to the current folder; allowed: an "
                         f"absolute path (sqlite:////path/to/mlflow.db), a server (http://...), or unset for "
                         f"the workspace's mlruns/mlflow.db")
    return uri


def artifact_root(root: Path | None = None) -> Path | None:
    """Where local artifacts go: beside a sqlite file, in the workspace for a bare database server, and
    nowhere (the server decides) for a tracking server."""
    uri = tracking_uri(root)
    if uri.startswith("sqlite:"):
        return workspace.sqlite_path(uri).parent / "artifacts"
    if urlparse(uri).scheme in ("http", "https", "databricks"):
        return None
    return workspace.mlflow_artifact_root(root)


def artifact_location(experiment_name: str, root: Path | None = None) -> str | None:
    base = artifact_root(root)
    return (base / experiment_name).as_uri() if base else None


_SWEPT: set[str] = set()   # stores this process opened: schema checked, orphaned runs closed


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _probe_database(uri: str) -> None:
    """One connection to a database store, with a short timeout: a refused or unknown server is one line now."""
    import sqlalchemy

    args = {"connect_timeout": 5} if uri.startswith(("postgresql", "mysql")) else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        raise StoreError(f"the tracking store {redact(uri)} cannot be reached: {_first_line(exc)}; "
                         f"allowed: a running database server in MLFLOW_TRACKING_URI, or unset it for the "
                         f"workspace's mlruns/mlflow.db") from None


def client(root: Path | None = None):
    """An ``MlflowClient`` on the store, whose schema is created once, under a lock beside the database, first.

    The first client of a process on a store also closes the runs this host left RUNNING with no process.
    """
    from mlflow.tracking import MlflowClient

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # mxlab reports its own progress
    if os.environ.get("MLFLOW_RUN_ID"):
        raise StoreError(f"MLFLOW_RUN_ID={os.environ['MLFLOW_RUN_ID']} is set: MLflow would log every run of "
                         f"mxlab into that one run; unset it (each mxlab run makes its own, and --resume continues "
                         f"one)")
    uri = tracking_uri(root)
    if uri.startswith("sqlite:") and uri in _SWEPT:
        c = MlflowClient(uri)   # this process made its store after the check below: MLflow keeps one a URI
    elif uri.startswith("sqlite:"):
        db = workspace.sqlite_path(uri)
        db.parent.mkdir(parents=True, exist_ok=True)
        with workspace.file_lock(db.parent / f".{db.name}.lock"):
            try:
                c = MlflowClient(uri)
                c.search_experiments(max_results=1)   # creates or migrates the schema, once, before any worker
            except Exception as exc:
                raise StoreError(f"the tracking store {db} cannot be used: {_first_line(exc)}; allowed: a "
                                 f"writable MLflow sqlite file, or a new path in MLFLOW_TRACKING_URI") from None
    elif urlparse(uri).scheme in ("http", "https", "databricks", "file", ""):
        c = MlflowClient(uri)
    else:   # a database server: MLflow would retry a refused connection ten times, for about two minutes
        uri = workspace.driver_url(uri)
        if uri not in _SWEPT:   # once a process, with its first client
            _probe_database(uri)
        c = MlflowClient(uri)
    if uri not in _SWEPT:
        _SWEPT.add(uri)
        close_orphans(c)
    return c


# ---------------------------------------------------------------- which process owns a run

def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or None when there is no such process: with
    the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "mxlab.pid": str(pid), "mxlab.pid_start": process_start(pid) or ""}


def owner_alive(tags: dict) -> bool | None:
    """Whether the process that owns a run (by its tags) is alive; None when it ran on another host or the run
    does not say."""
    if tags.get("host") != socket.gethostname() or not tags.get("mxlab.pid", "").isdigit():
        return None
    start = process_start(int(tags["mxlab.pid"]))
    return start is not None and (start == "unknown" or start == tags.get("mxlab.pid_start", start))


def running_here(c) -> list:
    """The runs of every experiment that are RUNNING and were started on this host."""
    experiments = [e.experiment_id for e in c.search_experiments(max_results=1000)]
    if not experiments:
        return []
    return c.search_runs(experiments, filter_string=f"attributes.status = 'RUNNING' and "
                                                    f"tags.host = '{socket.gethostname()}'", max_results=1000)


def close_orphans(c) -> list[str]:
    """Close KILLED the RUNNING runs of this host whose process is gone, saying why; remove their temporary
    folders. Returns their run ids."""
    closed = []
    for run in running_here(c):
        if owner_alive(run.data.tags) is not False:
            continue
        c.set_tag(run.info.run_id, "mxlab.closed_because",
                  f"process {run.data.tags['mxlab.pid']} on {run.data.tags['host']} ended without closing the run "
                  f"(SIGKILL, out of memory or power loss); closed by process {os.getpid()}")
        c.set_terminated(run.info.run_id, "KILLED")
        for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{TMP_PREFIX}{run.info.run_id}-*")):
            shutil.rmtree(folder, ignore_errors=True)
        closed.append(run.info.run_id)
    return closed


def once_more_on_a_duplicate_key(write, *args, **kwargs):
    """``write(*args, **kwargs)``, once more if it collided on a key. The MLflow store makes an experiment's tags
    and its datasets by looking for the row, then inserting it: two processes that make the same one at once (a
    study's workers on their first trials) both insert, and the second transaction is rolled back whole. Once
    more, it finds the first one's row."""
    from mlflow.exceptions import MlflowException

    try:
        return write(*args, **kwargs)
    except MlflowException as exc:
        if not any(words in str(exc).lower() for words in ("unique constraint", "duplicate entry")):
            raise
        return write(*args, **kwargs)


def experiment_id(c, name: str, root: Path | None = None, description: str | None = None) -> str:
    """The MLflow experiment named like the experiment folder, created (and tagged) on first use. A
    ``description`` (the spec's) becomes its description in MLflow (the ``mlflow.note.content`` tag)."""
    from mlflow.exceptions import MlflowException

    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, **({"mlflow.note.content": description} if description else {})}
    found = c.get_experiment_by_name(name)
    if found is None:
        try:
            return c.create_experiment(name, artifact_location=artifact_location(name, root), tags=wanted)
        except MlflowException:       # another worker created it first
            found = c.get_experiment_by_name(name)
            if found is None:
                raise
    for key, value in wanted.items():
        if found.tags.get(key) != value:
            once_more_on_a_duplicate_key(c.set_experiment_tag, found.experiment_id, key, value)
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
    """Ends the run FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM, SIGHUP), whatever happens inside.

    An exception leaving it carries ``mxlab_run_id`` (the innermost run's), so the command line can name it.
    """
    status = "FAILED"
    try:
        with stops_as_exceptions():
            yield
        status = "FINISHED"
    except KeyboardInterrupt as exc:
        status = "KILLED"
        if not hasattr(exc, "mxlab_run_id"):
            exc.mxlab_run_id = run_id
        with contextlib.suppress(Exception), stops_deferred():
            c.set_tag(run_id, "mxlab.stopped_by", signal_name(exc))
        raise
    except BaseException as exc:
        if not hasattr(exc, "mxlab_run_id"):
            exc.mxlab_run_id = run_id
        with contextlib.suppress(Exception), stops_deferred():
            c.set_tag(run_id, "mxlab.error", f"{type(exc).__name__}: {exc}"[:5000])
        raise
    finally:
        with stops_deferred():   # signals must not interrupt the status write itself
            c.set_terminated(run_id, status)


class MLflowLogger(Callback):
    """Logs each epoch's checkpoint files, then its metrics (``step`` = epoch), to an MLflow run as they happen.

    A stop signal waits until both are logged, so an epoch whose metrics are visible can always be resumed
    from. A resumed run first logs the epochs its checkpoint holds but the run lacks (a SIGKILL between the two).
    """

    def __init__(self, client, run_id: str, checkpoint_dir: Path | None = None):
        self.client, self.run_id, self.checkpoint_dir = client, run_id, checkpoint_dir

    def on_fit_begin(self, state):
        if state.history:
            logged = {m.step for m in self.client.get_metric_history(self.run_id, "train/loss")}
            for past in state.history:
                if past["epoch"] not in logged:
                    self._log_metrics(past["epoch"], {k: v for k, v in past.items() if k != "epoch"})

    def _log_metrics(self, epoch: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now, epoch)
                                                    for key, value in metrics.items()])

    def on_epoch_end(self, state, metrics):
        with stops_deferred():
            if self.checkpoint_dir is not None:   # what --resume needs, after every epoch
                log_files(self.client, self.run_id, self.checkpoint_dir,
                          Checkpoint.RESUME_FILES, "checkpoint")
            self._log_metrics(state.epoch, metrics)


def start_run(experiment: str, *, tags: dict | None = None, parent_run_id: str | None = None,
              run_name: str | None = None, root: Path | None = None, description: str | None = None):
    """A new MLflow run in ``experiment`` (described by ``description``, if given), owned by this process;
    returns ``(client, run)``."""
    c = client(root)
    exp_id = experiment_id(c, experiment, root, description)
    all_tags = {**process_tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return c, c.create_run(exp_id, run_name=run_name, tags=all_tags)


def reopen_run(c, run_id: str) -> None:
    """Mark an unfinished run RUNNING again, owned by this process (``--resume``)."""
    set_tags(c, run_id, process_tags())
    c.update_run(run_id, status="RUNNING")


def unfinished_runs(c, experiment: str) -> list:
    """Runs of ``experiment`` that did not finish (KILLED, FAILED, or RUNNING with their process gone), newest
    first; study parents are left out: they hold no training of their own."""
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = c.search_runs([found.experiment_id], filter_string="attributes.status != 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=200)
    return [r for r in runs if r.data.tags.get("mxlab.role") != "study"
            and not (r.info.status == "RUNNING" and owner_alive(r.data.tags) is not False)]


def has_artifact(c, run_id: str, path: str) -> bool:
    return path in {a.path for a in c.list_artifacts(run_id, path.rpartition("/")[0] or None)}


def download(c, run_id: str, path: str, dst: Path) -> Path | None:
    """One artifact of a run into ``dst``, or None when the run has none at ``path``."""
    if not has_artifact(c, run_id, path):
        return None
    folder = path.rpartition("/")[0]
    target = dst / folder   # MLflow writes the file itself into the folder given, not its artifact path
    target.mkdir(parents=True, exist_ok=True)
    return Path(c.download_artifacts(run_id, path, str(target)))


def log_files(c, run_id: str, folder: Path, names, artifact_path: str | None = None) -> None:
    for name in names:
        if (folder / name).exists():
            c.log_artifact(run_id, str(folder / name), artifact_path)


def log_pyfunc_model(c, run_id: str, folder: Path, artifacts: dict, card: dict | None = None, example=None):
    """The run's MLflow 3 LoggedModel ``model`` from files the runner wrote (a symbol and its params, or a spec,
    params and the experiment's own ``model.py``) and its card (:mod:`mxlab.packaging`): signature, input
    example and pip requirements. :mod:`mxlab.pyfunc_model` reloads them for prediction. Returns the ModelInfo."""
    from mxlab import logged_model

    return logged_model.log(run_id, folder, artifacts, card or {}, example, tracking_uri=c.tracking_uri)


def log_datasets(c, run_id: str, inputs: list[dict]) -> None:
    """The run's data as MLflow dataset inputs (the runs table's Dataset column): one per split, its context
    ``training``/``validation``/``test``, digest and size as the runner measured them."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    once_more_on_a_duplicate_key(c.log_inputs, run_id, datasets=[
        DatasetInput(Dataset(d["name"], d["digest"], "local", json.dumps({"uri": d["source"]}),
                             profile=json.dumps({d.get("unit", "examples"): d["num_examples"]})),
                     tags=[InputTag("mlflow.data.context", d["context"])]) for d in inputs])


@contextlib.contextmanager
def system_metrics(c, run_id: str, enabled: bool = True, resumed: bool = False):
    """MLflow's own sampler (``system/*``: CPU, memory, disk, network; GPU with nvidia-ml-py) for the block;
    every 10 s unless ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` says otherwise. Off: ``train.system_metrics``.
    A ``resumed`` run's samples go on after its last step (MLflow reads the run for it)."""
    if not enabled:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=c.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
