"""The one place that turns a spec into a run: devices, data, net, the callback chain, ``fit``, and the artifacts
a finished run leaves.

``run(spec)`` trains inside one MLflow run (:mod:`mxlab.tracking`) and leaves there the resolved ``spec.yaml``,
``params/final.params`` (and ``best.params``), ``checkpoint/`` after every epoch, ``model_summary.txt``,
``curves.png`` and a pyfunc ``model/``. ``run(spec, track=False)`` trains the same way with no MLflow at all
(nothing imported, nothing written outside a temporary folder): for notebooks, tests and benchmarks.

``resume(name, run_id)`` continues an unfinished run in the same MLflow run from its last checkpoint: the
spec the run recorded (only ``train.epochs`` may change), its parameters and optimizer state, and its
history; every epoch reseeds from ``train.seed + epoch``, so it ends where an uninterrupted run would.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mxlab import console, heap, workspace
from mxlab.callbacks import STATES_ORDER, Callback, Checkpoint, EarlyStopping, TextSampler
from mxlab.console import ConsoleProgress
from mxlab.coerce import SpecError
from mxlab.devices import mxnet_reason
from mxlab.interrupts import stops_as_exceptions
from mxlab.spec import Spec, dump_yaml, from_dict, read_yaml

class CheckpointError(ValueError):
    """A checkpoint that cannot be continued from; the message names the file and what is wrong."""


@dataclass
class RunResult:
    run_id: str | None          # None for an untracked run
    experiment: str
    status: str
    history: list = field(default_factory=list)
    stop_reason: str | None = None   # why training ended before train.epochs (early stopping)
    net: Any = field(default=None, repr=False)   # the trained network, for a notebook to use further

    @property
    def metrics(self) -> dict:
        """The last epoch's metrics."""
        return {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "epoch"}


def run(spec: Spec, *, track: bool = True, callbacks=(), tags: dict | None = None, parent_run_id: str | None = None,
        run_name: str | None = None, progress: bool = True, root: Path | None = None) -> RunResult:
    """Train ``spec``; with ``track``, inside one MLflow run recording everything DESIGN.md lists.

    Exceptions propagate after the run is closed with the matching status (FAILED, or KILLED on Ctrl-C/SIGTERM).
    In a distributed job (``mxlab launch``) rank 0 makes the job's one MLflow run; the other workers train
    untracked.
    """
    if job_rank(spec)[0] != 0:
        track = False
    if not track:
        heap.settle()
        with stops_as_exceptions(), tempfile.TemporaryDirectory(prefix="mxlab-") as tmp:
            training = _Training(spec, Path(tmp), callbacks, progress)
            training.fit()
        return RunResult(None, spec.name, "FINISHED", training.history, training.stop_reason, training.net)

    from mxlab import naming, tracking

    tags = {"mlflow.note.content": naming.command_line(), **(tags or {})}   # the run's notes: how it was made
    run_name = run_name or naming.run_name(spec, tags.get("mxlab.preset"))
    c, run = tracking.start_run(spec.name, tags=tags, parent_run_id=parent_run_id, run_name=run_name, root=root,
                                description=spec.description)
    run_id = run.info.run_id
    if progress:
        console.announce(run_id, run_name, console.ui_url(c.tracking_uri, run.info.experiment_id, run_id))
    return _tracked(c, run_id, spec, callbacks, progress, root)


def resume(name: str, run_ref: str, overrides: Sequence[str] = (), *, callbacks=(), progress: bool = True,
           root: Path | None = None) -> RunResult:
    """Continue run ``run_ref`` (an id, or ``last``: the newest unfinished run of ``name``) in the same MLflow run."""
    from mxlab import tracking

    c = tracking.client(root)
    run = _run_to_resume(c, name, run_ref)
    run_id = run.info.run_id
    epochs = _epochs_override(overrides)
    with tempfile.TemporaryDirectory(prefix=f"{tracking.TMP_PREFIX}{run_id}-") as tmp:
        recorded = tracking.download(c, run_id, "spec.yaml", Path(tmp))
        if recorded is None:
            raise CheckpointError(f"run {run_id} has no spec.yaml: it stopped before it started training; start "
                                  f"a new run with: mxlab run {name}")
        folder = workspace.experiment_dir(name, root)
        workspace.import_experiment_model(folder)
        spec = from_dict(name, [(recorded, read_yaml(recorded))], epochs, path=folder / workspace.SPEC_FILE)
        for file in Checkpoint.RESUME_FILES:   # best.params may be missing; the others are checked below
            tracking.download(c, run_id, f"checkpoint/{file}", Path(tmp))
        start = _read_checkpoint(Path(tmp) / "checkpoint", run_id)
        done = start["epoch"] if start else 0
        if run.info.status == "FINISHED" and done >= spec.train.epochs:
            raise SpecError(f"run {run_id} FINISHED its {done} epochs; to train it further, resume it with "
                            f"train.epochs={done + 5} (more than {done})")
        tracking.reopen_run(c, run_id)
        return _tracked(c, run_id, spec, callbacks, progress, root, start=start)


def _run_to_resume(c, name: str, run_ref: str):
    from mlflow.exceptions import MlflowException

    from mxlab import tracking

    if run_ref == "last":
        runs = tracking.unfinished_runs(c, name)
        if not runs:
            raise SpecError(f"--resume last: experiment {name!r} has no unfinished run (KILLED, FAILED, or RUNNING "
                            f"with its process gone); `mxlab run {name}` starts a new one")
        return runs[0]
    try:
        run = c.get_run(run_ref)
    except MlflowException:
        raise SpecError(f"--resume {run_ref}: no such run in {workspace.redact(tracking.tracking_uri())}; allowed: "
                        f"the id of a run of {name!r}, or last") from None
    if run.data.tags.get("mxlab.experiment") != name:
        raise SpecError(f"--resume {run_ref}: that run belongs to experiment "
                        f"{run.data.tags.get('mxlab.experiment', '(not an mxlab run)')!r}, not {name!r}")
    if run.info.status == "RUNNING" and tracking.owner_alive(run.data.tags) is not False:
        raise SpecError(f"--resume {run_ref}: the run is still RUNNING in process {run.data.tags.get('mxlab.pid')} "
                        f"on {run.data.tags.get('host')}; stop that process first")
    return run


def _epochs_override(overrides: Sequence[str]) -> list[str]:
    """Only ``train.epochs`` may change on resume (to extend a run): any other key would make it another run."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key != "train.epochs":
            raise SpecError(f"command line: {key}: cannot change on --resume; allowed: train.epochs (to extend the "
                            f"run); any other change is a new run: mxlab run NAME {item}")
    return list(overrides)


def _read_checkpoint(folder: Path, run_id: str) -> dict | None:
    """The last epoch's record with its files, checked: the optimizer state (a pickle) must match the SHA-256
    recorded when it was written before anything unpickles it."""
    if not (folder / "last.json").is_file():
        return None   # stopped during the first epoch: start it again in the same run
    try:
        record = json.loads((folder / "last.json").read_text())
        epoch, history = int(record["epoch"]), list(record["history"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"run {run_id}: checkpoint/last.json is damaged ({exc})") from None
    for name in ("last.params", "last.states"):
        if not (folder / name).is_file():
            raise CheckpointError(f"run {run_id}: checkpoint/{name} is missing beside last.json")
    digest = hashlib.sha256((folder / "last.states").read_bytes()).hexdigest()
    if digest != record.get("states_sha256"):
        raise CheckpointError(f"run {run_id}: checkpoint/last.states has SHA-256 {digest}, the checkpoint recorded "
                              f"{record.get('states_sha256')}: refusing to load an optimizer state (a pickle) that "
                              f"mxlab did not write")
    if record.get("states_order") != STATES_ORDER:
        raise CheckpointError(f"run {run_id}: its checkpoint keeps the optimizer state in the order of an earlier "
                              f"mxlab, which could give one layer's state to another; start a new run instead: "
                              f"mxlab run NAME")
    return {"epoch": epoch, "history": history, "folder": folder}


def _tracked(c, run_id: str, spec: Spec, callbacks, progress: bool, root: Path | None,
             start: dict | None = None) -> RunResult:
    from mxlab import packaging, tracking

    with tracking.run_lifecycle(c, run_id), \
            tempfile.TemporaryDirectory(prefix=f"{tracking.TMP_PREFIX}{run_id}-") as tmp:
        folder = Path(tmp)
        if start is None:
            tracking.log_params(c, run_id, spec)
            for key, value in job_params(spec).items():
                c.log_param(run_id, key, value)
            (folder / "spec.yaml").write_text(dump_yaml(spec), encoding="utf-8")
            tracking.log_files(c, run_id, folder, ["spec.yaml"])
        if progress:
            console.stage(f"loading {spec.data.name} and building {spec.model.name}")
        # Set up: what is alive now, and what the run's end imports, lives as long as the process. Before the data
        # and the network, which a study's next trial must be able to free.
        heap.settle("matplotlib.figure", "matplotlib.backends.backend_agg", "mlflow.pyfunc")
        training = _Training(spec, folder, callbacks, progress,
                             on_sample=lambda path, epoch: c.log_artifact(run_id, str(path), "samples"))
        tracking.set_tags(c, run_id, tracking.run_tags(spec, training.device_tags(), training.bundle.checksums, root))
        tracking.log_datasets(c, run_id, packaging.dataset_inputs(spec, training.bundle))
        if start is not None:
            training.load_checkpoint(start)
            # MLflow params never change: a run extended on resume says its new length in a tag.
            tracking.set_tags(c, run_id, {"mxlab.resumed_from_epoch": start["epoch"],
                                          "mxlab.epochs": spec.train.epochs})
        with tracking.system_metrics(c, run_id, spec.train.system_metrics, resumed=start is not None):
            training.fit(tracking.MLflowLogger(c, run_id, training.checkpoint_dir))
        if training.stop_reason:
            c.set_tag(run_id, "mxlab.stopped_early", training.stop_reason)
        if progress:
            console.stage("saving the curves, the parameters and the MLflow model")
        training.write_reports()
        tracking.log_files(c, run_id, folder, ["model_summary.txt", "curves.png"])
        tracking.log_files(c, run_id, training.checkpoint_dir, ["final.params", "best.params"], "params")
        tracking.log_pyfunc_model(c, run_id, folder, training.model_files(),
                                  *packaging.describe(spec, training.bundle, training.net))
    return RunResult(run_id, spec.name, "FINISHED", training.history, training.stop_reason, training.net)


def job_rank(spec: Spec) -> tuple[int, int]:
    """(rank, workers) of this process in a distributed job (``train.kvstore=dist_*``), else (0, 1)."""
    if not spec.train.kvstore.startswith("dist"):
        return 0, 1
    from mxlab.train import worker_rank

    return worker_rank(spec.train)


def job_params(spec: Spec) -> dict[str, str]:
    """What a distributed job trains with, beside the spec: a synchronous step averages the gradient over every
    worker's batch (as one process with that batch and ``train.lr``); an asynchronous one applies each alone."""
    workers = job_rank(spec)[1]
    if workers == 1:
        return {}
    batch = spec.data.batch_size * (1 if spec.train.kvstore == "dist_async" else workers)
    return {"launch.workers": str(workers), "launch.effective_batch_size": str(batch),
            "launch.effective_lr": str(spec.train.lr)}


class _Ending(Callback):
    reason: str | None = None

    def on_fit_end(self, state) -> None:
        self.reason = state.stop_reason


class _Training:
    """Devices, data and net for one spec, and the callback chain every run shares."""

    def __init__(self, spec: Spec, folder: Path, callbacks, progress: bool, on_sample=None):
        from mxlab import devices
        from mxlab.data import load_data
        from mxlab.train import prepare_net

        self.spec, self.folder, self.extra, self.progress, self.on_sample = spec, folder, callbacks, progress, on_sample
        self.ctx_list = devices.contexts(spec.train.device)
        self.bundle = load_data(spec, self.ctx_list[0], job_rank(spec))
        self.net = prepare_net(spec, self.bundle, self.ctx_list)
        self.checkpoint_dir = folder / "checkpoint"
        self.history: list = []
        self.stop_reason: str | None = None
        self.start_epoch, self.updater = 0, None

    def load_checkpoint(self, start: dict) -> None:
        """Parameters, optimizer state and history of the last finished epoch; a file of another network or a
        damaged one is an error naming the file, not a traceback."""
        from mxlab.train import make_updater

        folder = start["folder"]
        try:
            self.net.load_parameters(str(folder / "last.params"), ctx=self.ctx_list)
        except (AssertionError, ValueError) as exc:   # Gluon reports a shape or name mismatch with assert
            raise CheckpointError(f"checkpoint/last.params does not fit this network: {exc}") from None
        except Exception as exc:   # MXNetError for a truncated or foreign file
            raise CheckpointError(f"checkpoint/last.params cannot be read (truncated or not an MXNet params "
                                  f"file): {mxnet_reason(exc)}") from None
        self.updater = make_updater(self.net, self.spec.train, self.ctx_list)
        self.updater.load_states(str(folder / "last.states"))   # its SHA-256 was checked by resume
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if (folder / "best.params").is_file():
            (self.checkpoint_dir / "best.params").write_bytes((folder / "best.params").read_bytes())
        self.start_epoch, self.history = start["epoch"], start["history"]

    def device_tags(self) -> dict:
        from mxlab import devices

        return {"devices": devices.describe(self.ctx_list), **devices.build_features()}

    def chain(self, logger=None) -> list:
        spec = self.spec
        chain = [ConsoleProgress()] if self.progress else []
        chain.append(Checkpoint(self.checkpoint_dir, monitor=spec.search.metric, mode=spec.search.direction))
        if logger is not None:
            chain.append(logger)
        stop = spec.train.early_stopping
        if stop is not None:
            from mxlab.tasks import tasks

            chain.append(EarlyStopping(stop.metric, stop.patience, stop.min_delta,
                                       tasks.get(spec.task)().direction(stop.metric)))
        if spec.train.sample_every > 0:   # the sampler refuses data without a vocabulary, clearly
            chain.append(TextSampler(self.folder / "samples", spec.train.sample_every, spec.train.sample_prefixes,
                                     spec.train.sample_length, on_write=self.on_sample))
        return [*chain, *self.extra]

    def fit(self, logger=None) -> None:
        from mxlab.train import fit

        ending = _Ending()   # why training stopped early, whichever callback stopped it
        self.history = fit(self.spec, self.net, self.bundle, self.ctx_list, [*self.chain(logger), ending],
                           start_epoch=self.start_epoch, updater=self.updater, history=self.history)
        self.stop_reason = ending.reason

    # ------------------------------------------------------------ artifacts of a finished run

    def write_reports(self) -> None:
        """``model_summary.txt`` and ``curves.png``: written once training has run (deferred shapes are known)."""
        (self.folder / "model_summary.txt").write_text(model_summary(self.net, self.bundle.input_shape),
                                                       encoding="utf-8")
        plot_curves(self.history, self.folder / "curves.png")

    def model_files(self) -> dict:
        """What the pyfunc model loads: a hybridized network with one input is exported as a symbol and reloads
        without mxlab; any other (from scratch, or recurrent with its state) is rebuilt by mxlab from a spec whose
        model options include what the data decided (``vocab_size``)."""
        from mxlab.devices import import_mxnet
        from mxlab.train import model_options

        mx, spec, folder = import_mxnet(), self.spec, self.folder
        if isinstance(self.net, mx.gluon.HybridBlock) and spec.train.hybridize:
            if len(self.history) <= self.start_epoch:
                # Resumed with every epoch done (stopped while saving its model): a hybridized network exports
                # only after a forward pass, and none has run in this process. One evaluation pass is one.
                from mxlab.tasks import tasks
                from mxlab.train import evaluate

                split, loader = list(self.bundle.splits().items())[-1]
                evaluate(self.net, loader, tasks.get(spec.task)(), self.ctx_list, split)
            self.net.export(str(folder / "net"))
            symbol = mx.sym.load(str(folder / "net-symbol.json"))
            if len([name for name in symbol.list_inputs() if name.startswith("data")]) == 1:
                return {"symbol": folder / "net-symbol.json", "params": folder / "net-0000.params"}
        full = spec.replace(**{f"model.{k}": v for k, v in model_options(spec, self.bundle).items()})
        (folder / "model-spec.yaml").write_text(dump_yaml(full), encoding="utf-8")
        files = {"spec": folder / "model-spec.yaml", "params": self.checkpoint_dir / "final.params"}
        own_model = spec.path.parent / "model.py" if spec.path else None
        if own_model and own_model.is_file():   # the experiment folder registers this model itself
            files["experiment_model"] = own_model
        return files


def model_summary(net, input_shape) -> str:
    """The network's structure and a parameter table with the total count."""
    lines = [repr(net), "", f"input shape (one example): {tuple(input_shape)}", ""]
    if getattr(net, "scratch", False):
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


def _in_view(base):
    """``base``'s ticks, less those outside the axis's view. Matplotlib builds a tick (two lines, a grid line,
    two labels) for every location a locator returns and then draws those in view only; a log axis gets 11-18 of
    which 2-5 show, and building them was a quarter of the plot's cost."""
    from matplotlib.ticker import Locator

    class InView(Locator):
        def set_axis(self, axis):
            super().set_axis(axis)
            base.set_axis(axis)

        def __call__(self):
            # In the axis's own scale, with room to spare: matplotlib makes the exact cut itself.
            scale = self.axis.get_transform()
            low, high = sorted(scale.transform(self.axis.get_view_interval()))
            slack = 1e-6 * (high - low)
            locs = list(base())
            places = scale.transform(locs) if locs else []
            return [v for v, t in zip(locs, places) if low - slack <= t <= high + slack]

        def nonsingular(self, v0, v1):
            return base.nonsingular(v0, v1)

        def view_limits(self, vmin, vmax):
            return base.view_limits(vmin, vmax)

    return InView()


_KEPT_FIGURE: dict = {}   # the last plot's figure, by its panels and curves
LOG_SCALED = ("loss", "ppl", "l2_norm_w")   # panels whose y axis is logarithmic


def plot_curves(history: list[dict], path: Path) -> None:
    """``curves.png``: one panel per kind of metric (loss, accuracy, perplexity, weight norm), a curve per key.

    The figure is kept for the next plot with the same panels and curves (a study's next trial), which draws
    new data on it: building the axes and their ticks cost as much as drawing them."""
    from matplotlib.ticker import AutoLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator

    epochs = [h["epoch"] for h in history]
    groups = [("loss", "loss"), ("acc", "accuracy"), ("ppl", "perplexity"), ("l2_norm_w", "L2 norm of w")]
    panels = [(suffix, title, [key for key in history[0] if key.endswith("/" + suffix) or key == suffix])
              for suffix, title in groups]
    panels = [panel for panel in panels if panel[2]]
    layout = tuple((suffix, tuple(keys)) for suffix, _, keys in panels)
    fig = _KEPT_FIGURE.pop(layout, None) or _curves_figure(panels)
    for ax, (suffix, _, keys) in zip(fig.axes, panels):
        curves = {key: [h[key] for h in history] for key in keys}
        for line, values in zip(ax.lines, curves.values()):
            line.set_data(epochs, values)
        ax.relim()
        ax.autoscale_view()
        if suffix in LOG_SCALED:
            # Labelled ticks at 1, 2 and 5 of each decade (most curves span less than one) and no minor ones:
            # laying out a log axis's minor ticks was most of the plot's cost.
            positive = [v for values in curves.values() for v in values if v > 0]
            wide = positive and max(positive) > 100 * min(positive)
            ax.yaxis.set_major_locator(_in_view(LogLocator() if wide else LogLocator(subs=(1.0, 2.0, 5.0))))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.yaxis.set_major_locator(_in_view(AutoLocator()))
        ax.xaxis.set_major_locator(_in_view(MaxNLocator(integer=True)))
    fig.savefig(path, dpi=100)
    _KEPT_FIGURE.clear()
    _KEPT_FIGURE[layout] = fig


def _curves_figure(panels: list):
    """The panels' axes with a titled, labelled, empty curve per key."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(panels), 3.6))
    for ax, (suffix, title, keys) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in keys:
            ax.plot([], [], marker="o", label=key)
        if suffix in LOG_SCALED:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, y=1.0)   # placed: lifting it above the tick labels measured every label, for nothing
        ax.legend()
    # Fixed margins in inches, room for tick labels like 0.725: tight_layout measured every tick label and cost as
    # much as drawing. With plot_curves' ticks, 0.43 -> 0.13 CPU-s a plot, paid by every run and every trial.
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                        wspace=0.8 / (width / len(panels) - 0.8))
    return fig
