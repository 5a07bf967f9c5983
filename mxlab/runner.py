"""The one place that turns a spec into a run: devices, data, net, the callback chain, ``fit``, and the artifacts
a finished run leaves.

``run(spec)`` trains inside one MLflow run (:mod:`mxlab.tracking`) and leaves there the resolved ``spec.yaml``,
``params/final.params`` (and ``best.params``), ``checkpoint/`` after every epoch, ``model_summary.txt``,
``curves.png`` and a pyfunc ``model/``. ``run(spec, track=False)`` trains the same way with no MLflow at all
(nothing imported, nothing written outside a temporary folder): for notebooks, tests and benchmarks.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxlab.callbacks import Checkpoint, ConsoleProgress, EarlyStopping, TextSampler
from mxlab.interrupts import sigterm_as_exception
from mxlab.spec import Spec, dump_yaml


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
    """
    if not track:
        with sigterm_as_exception(), tempfile.TemporaryDirectory(prefix="mxlab-") as tmp:
            training = _Training(spec, Path(tmp), callbacks, progress)
            training.fit()
        return RunResult(None, spec.name, "FINISHED", training.history, training.stop_reason, training.net)

    from mxlab import tracking

    c, run_id = tracking.start_run(spec, tags=tags, parent_run_id=parent_run_id, run_name=run_name, root=root)
    with tracking.run_lifecycle(c, run_id), tempfile.TemporaryDirectory(prefix="mxlab-") as tmp:
        folder = Path(tmp)
        tracking.log_params(c, run_id, spec)
        (folder / "spec.yaml").write_text(dump_yaml(spec), encoding="utf-8")
        tracking.log_files(c, run_id, folder, ["spec.yaml"])
        training = _Training(spec, folder, callbacks, progress,
                             on_sample=lambda path, epoch: c.log_artifact(run_id, str(path), "samples"))
        tracking.set_tags(c, run_id, tracking.run_tags(spec, training.device_tags(), training.bundle.checksums, root))
        training.fit(tracking.MLflowLogger(c, run_id, training.checkpoint_dir))
        if training.stop_reason:
            c.set_tag(run_id, "mxlab.stopped_early", training.stop_reason)
        training.write_reports()
        tracking.log_files(c, run_id, folder, ["model_summary.txt", "curves.png"])
        tracking.log_files(c, run_id, training.checkpoint_dir, ["final.params", "best.params"], "params")
        tracking.log_pyfunc_model(c, run_id, folder, training.model_files())
    return RunResult(run_id, spec.name, "FINISHED", training.history, training.stop_reason, training.net)


class _Training:
    """Devices, data and net for one spec, and the callback chain every run shares."""

    def __init__(self, spec: Spec, folder: Path, callbacks, progress: bool, on_sample=None):
        from mxlab import devices
        from mxlab.data import load_data
        from mxlab.train import prepare_net

        self.spec, self.folder, self.extra, self.progress, self.on_sample = spec, folder, callbacks, progress, on_sample
        self.ctx_list = devices.contexts(spec.train.device)
        self.bundle = load_data(spec, self.ctx_list[0])
        self.net = prepare_net(spec, self.bundle, self.ctx_list)
        self.checkpoint_dir = folder / "checkpoint"
        self.history: list = []
        self.stop_reason: str | None = None

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

        chain = self.chain(logger)
        self.history = fit(self.spec, self.net, self.bundle, self.ctx_list, chain)
        if len(self.history) < self.spec.train.epochs:
            self.stop_reason = next((cb.reason for cb in chain if isinstance(cb, EarlyStopping) and cb.reason), None)

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
