"""MLflow: where runs go, how a run starts and ends, and what it records.

Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlruns/mlflow.db`` with artifacts under
``<root>/mlruns/artifacts``. One MLflow experiment per experiment folder. A run ends FINISHED, FAILED
(an exception or a non-finite loss) or KILLED (Ctrl-C, SIGTERM): never RUNNING.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mxlab import devices
from mxlab.spec import Spec, dump_yaml, workspace_root

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"   # MLflow 3's UI then opens the experiment on its training runs


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the run is closed as KILLED."""


def store_dir(root: Path | None = None) -> Path:
    return (root or workspace_root()) / "mlruns"


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir(root) / 'mlflow.db'}"


def artifact_location(experiment_name: str, root: Path | None = None) -> str | None:
    """Local artifacts for the embedded store; a tracking server chooses its own."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (store_dir(root) / "artifacts" / experiment_name).as_uri()


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` across processes: one of them creates a store's schema, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def client(root: Path | None = None):
    """An ``MlflowClient`` on the workspace store, whose schema is created once, under a file lock, first."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    if uri.startswith("sqlite:"):
        with file_lock(store_dir(root) / ".lock"):
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


def run_tags(spec: Spec, ctx_list, bundle, root: Path | None = None) -> dict[str, str]:
    # The commit of the repository that holds the experiment folder (a workspace may link to it).
    source = Path(spec.path).resolve().parent if spec.path else (root or workspace_root())
    tags = {
        "mxlab.experiment": spec.name,
        "mxlab.task": spec.task,
        "mxlab.model": spec.model.name,
        "mxlab.dataset": spec.data.name,
        "devices": devices.describe(ctx_list),
        "host": socket.gethostname(),
        **devices.build_features(),
        **bundle.checksums,
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


def log_params(c, run_id: str, spec: Spec) -> None:
    from mlflow.entities import Param

    params = [Param(k, str(v)[:6000]) for k, v in sorted(spec.flat().items())]
    for start in range(0, len(params), 100):
        c.log_batch(run_id, params=params[start:start + 100])


@contextlib.contextmanager
def sigterm_as_exception():
    """Turn SIGTERM into :class:`Terminated` in the main thread for the duration; elsewhere do nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        # Signals must not interrupt the status write itself.
        old = signal.signal(signal.SIGTERM, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() else None
        try:
            c.set_terminated(run_id, status)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)


# ---------------------------------------------------------------- artifacts

def model_summary(net, input_shape) -> str:
    """The network's structure and a parameter table with the total count."""
    lines = [repr(net), "", f"input shape (one example): {tuple(input_shape)}", ""]
    from mxlab.train import is_scratch

    if is_scratch(net):
        params = {name: value.shape for name, value in net.params.items()}
    else:
        params = {name: p.shape for name, p in net.collect_params().items()}
    total = 0
    width = max((len(n) for n in params), default=10)
    for name, shape in params.items():
        count = 1
        for dim in shape:
            count *= dim
        total += count
        lines.append(f"{name:<{width}}  {str(tuple(shape)):<24} {count:>12,}")
    lines.append(f"{'total':<{width}}  {'':<24} {total:>12,}")
    return "\n".join(lines) + "\n"


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    groups = [("loss", "loss"), ("acc", "accuracy"), ("ppl", "perplexity"), ("l2_norm_w", "L2 norm of w")]
    present = [(suffix, title) for suffix, title in groups
               if any(k.endswith("/" + suffix) or k == suffix for k in history[0])]
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.6), squeeze=False)
    for ax, (suffix, title) in zip(axes[0], present):
        for key in history[0]:
            if key.endswith("/" + suffix) or key == suffix:
                ax.plot(epochs, [h[key] for h in history], marker="o", label=key)
        if suffix in ("loss", "ppl", "l2_norm_w"):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_pyfunc_model(c, run_id: str, net, spec: Spec, bundle, folder: Path) -> None:
    """An MLflow pyfunc model under ``model/`` that reloads the network for prediction.

    A hybridized network with one input is exported as a symbol and reloads without mxlab; any other (a
    from-scratch network, a recurrent one that also takes its state) is rebuilt by mxlab from ``spec.yaml``,
    whose model options then include what the data decided (``vocab_size``).
    """
    import mlflow.pyfunc

    from mxlab.train import model_options

    mx = devices.import_mxnet()
    artifacts = {}
    if isinstance(net, mx.gluon.HybridBlock) and spec.train.hybridize:
        net.export(str(folder / "net"))
        symbol = mx.sym.load(str(folder / "net-symbol.json"))
        inputs = [name for name in symbol.list_inputs() if name.startswith("data")]
        if len(inputs) == 1:
            artifacts = {"symbol": str(folder / "net-symbol.json"), "params": str(folder / "net-0000.params")}
    if not artifacts:
        full = spec.replace(**{f"model.{k}": v for k, v in model_options(spec, bundle).items()})
        (folder / "model-spec.yaml").write_text(dump_yaml(full), encoding="utf-8")
        artifacts = {"spec": str(folder / "model-spec.yaml"), "params": str(folder / "final.params")}
        own_model = spec.path.parent / "model.py" if spec.path else None
        if own_model and own_model.is_file():   # the experiment folder registers this model itself
            artifacts["experiment_model"] = str(own_model)
    model_dir = folder / "model"
    # MLflow warns (and forces the warning on) that `predict` has no type hints: inputs are arrays of any
    # shape here, with no schema to give. Recording the warnings keeps them off the console.
    with warnings.catch_warnings(record=True):
        mlflow.pyfunc.save_model(str(model_dir), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                 artifacts=artifacts)
    c.log_artifacts(run_id, str(model_dir), "model")


# ---------------------------------------------------------------- a tracked run

@dataclass
class RunResult:
    run_id: str
    experiment: str
    status: str
    history: list = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "epoch"}


def run_experiment(spec: Spec, *, callbacks=(), tags: dict | None = None, parent_run_id: str | None = None,
                   run_name: str | None = None, progress: bool = True, root: Path | None = None) -> RunResult:
    """Train ``spec`` inside one MLflow run and record everything DESIGN.md lists; returns the run's result.

    Exceptions propagate after the run is closed with the matching status.
    """
    from mxlab.callbacks import Checkpoint, ConsoleProgress, MLflowLogger, TextSampler
    from mxlab.data import load_data
    from mxlab.train import fit, prepare_net

    c = client(root)
    exp_id = experiment_id(c, spec.name, root)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    history: list = []
    with run_lifecycle(c, run_id), tempfile.TemporaryDirectory(prefix="mxlab-") as tmp:
        folder = Path(tmp)
        log_params(c, run_id, spec)
        (folder / "spec.yaml").write_text(dump_yaml(spec), encoding="utf-8")
        c.log_artifact(run_id, str(folder / "spec.yaml"))
        ctx_list = devices.contexts(spec.train.device)
        bundle = load_data(spec, ctx_list[0])
        net = prepare_net(spec, bundle, ctx_list)
        set_tags(c, run_id, run_tags(spec, ctx_list, bundle, root))
        checkpoint_dir = folder / "checkpoint"
        checkpoint = Checkpoint(checkpoint_dir, monitor=spec.search.metric, mode=spec.search.direction)
        chain = [checkpoint, MLflowLogger(c, run_id, checkpoint_dir), *callbacks]
        if spec.train.sample_every > 0:   # the sampler refuses data without a vocabulary, clearly
            chain.append(TextSampler(folder / "samples", spec.train.sample_every, spec.train.sample_prefixes,
                                     spec.train.sample_length,
                                     on_write=lambda path, epoch: c.log_artifact(run_id, str(path), "samples")))
        if progress:
            chain.insert(0, ConsoleProgress())
        history = fit(spec, net, bundle, ctx_list, chain)
        # Artifacts that need the first batch (deferred shapes) are written once training has run.
        (folder / "model_summary.txt").write_text(model_summary(net, bundle.input_shape), encoding="utf-8")
        c.log_artifact(run_id, str(folder / "model_summary.txt"))
        for name in ("final.params", "best.params"):
            if (checkpoint_dir / name).exists():
                c.log_artifact(run_id, str(checkpoint_dir / name), "params")
        plot_curves(history, folder / "curves.png")
        c.log_artifact(run_id, str(folder / "curves.png"))
        (folder / "final.params").write_bytes((checkpoint_dir / "final.params").read_bytes())
        log_pyfunc_model(c, run_id, net, spec, bundle, folder)
    return RunResult(run_id, spec.name, "FINISHED", history)
