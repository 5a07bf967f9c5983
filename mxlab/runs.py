"""Runs from the command line: list them, show one, compare several, predict with one. Reads the MLflow store
through :mod:`mxlab.tracking`'s client; prints plain tables (stdout) for people, and returns data for tests."""
from __future__ import annotations

import sys
from pathlib import Path

from mxlab.console import duration, number
from mxlab.workspace import redact

HIDDEN = ("perf/", "system/")   # metrics left out of tables: throughput and machine load, not results


def _client():
    from mxlab.tracking import client

    return client()


def table(rows: list[list[str]], stream=None) -> None:
    stream = stream or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        stream.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(HIDDEN)}


def epochs(c, run) -> int:
    key = next((k for k in ("train/loss", "train/ppl") if k in run.data.metrics), None)
    return max((m.step for m in c.get_metric_history(run.info.run_id, key)), default=0) if key else 0


def run_seconds(run) -> float | None:
    if run.info.end_time and run.info.start_time:
        return (run.info.end_time - run.info.start_time) / 1000
    return None


def experiment_runs(c, name: str, limit: int = 20):
    exp = c.get_experiment_by_name(name)
    if exp is None:
        raise ValueError(f"experiment {name!r} has no runs in this store; allowed: an experiment that has run "
                         f"(mxlab run {name})")
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit)


def list_runs(name: str, limit: int = 20) -> list[list[str]]:
    c = _client()
    runs = experiment_runs(c, name, limit)
    shown = sorted({k for r in runs for k in results(r.data.metrics)} & {"train/loss", "val/acc", "test/acc",
                                                                          "val/loss", "train/ppl", "val/ppl"})
    rows = [["run_id", "name", "status", "epochs", *shown, "duration"]]
    for r in runs:
        secs = run_seconds(r)
        rows.append([r.info.run_id, r.info.run_name or "", r.info.status, str(epochs(c, r)),
                     *[number(r.data.metrics[k]) if k in r.data.metrics else "-" for k in shown],
                     duration(secs) if secs is not None else "running"])
    return rows


def get_run(c, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_run(run_id)
    except MlflowException:
        raise ValueError(f"run {run_id!r} is not in {redact(c.tracking_uri)}; allowed: a run id from "
                         f"`mxlab runs NAME`") from None


def artifact_paths(c, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in c.list_artifacts(run_id, path):
        out.extend(artifact_paths(c, run_id, item.path) if item.is_dir else [item.path])
    return out


def show(run_id: str, stream=None) -> None:
    stream = stream or sys.stdout
    c = _client()
    run = get_run(c, run_id)
    exp = c.get_experiment(run.info.experiment_id)
    secs = run_seconds(run)
    stream.write(f"run {run_id} ({run.info.run_name}) of {exp.name}: {run.info.status}, {epochs(c, run)} epochs, "
                 f"{duration(secs) if secs is not None else 'running'}\n")
    note = run.data.tags.get("mlflow.note.content")
    if note:
        stream.write(f"command: {note}\n")
    for title, items in (("metrics (last epoch)", {k: number(v) for k, v in results(run.data.metrics).items()}),
                         ("params", run.data.params),
                         ("tags", {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")})):
        stream.write(f"\n{title}:\n")
        for key in sorted(items):
            stream.write(f"  {key} = {items[key]}\n")
    stream.write("\nartifacts:\n")
    for path in artifact_paths(c, run_id):
        stream.write(f"  {path}\n")
    for output in (run.outputs.model_outputs if run.outputs else []):
        stream.write(f"  logged model {output.model_id} (models:/{output.model_id})\n")


def resolve(c, refs: list[str]) -> list:
    """Experiment names become their latest finished training run; anything else is a run id."""
    from mxlab import workspace

    names = set(workspace.experiment_names())
    runs = []
    for ref in refs:
        if ref in names:
            found = [r for r in experiment_runs(c, ref, 50)
                     if r.info.status == "FINISHED" and r.data.tags.get("mxlab.role") != "study"]
            if not found:
                raise ValueError(f"{ref}: no FINISHED run yet; allowed: an experiment that has finished a run, or a "
                                 f"run id")
            runs.append(found[0])
        else:
            runs.append(get_run(c, ref))
    return runs


def book_values(experiment: str) -> dict:
    try:
        from mxlab.reproduce import ROWS
    except ImportError:
        return {}
    return next((dict(row.book) for row in ROWS if row.experiment == experiment), {})


def compare(refs: list[str], plot: Path | None = None, stream=None) -> list[list[str]]:
    c = _client()
    runs = resolve(c, refs)
    labels = [f"{r.data.tags.get('mxlab.experiment', '?')} {r.info.run_id[:8]}" for r in runs]
    books = [book_values(r.data.tags.get("mxlab.experiment", "")) for r in runs]
    keys = sorted({k for r in runs for k in results(r.data.metrics)} | {k for b in books for k in b})
    show_book = any(books)
    header = ["metric"]
    for label, book in zip(labels, books):
        header += [label] + (["book"] if show_book else [])
    rows = [header, ["epochs"] + sum(([str(epochs(c, r))] + ([""] if show_book else []) for r in runs), [])]
    for key in keys:
        row = [key]
        for r, book in zip(runs, books):
            row.append(number(r.data.metrics[key]) if key in r.data.metrics else "-")
            if show_book:
                row.append(number(book[key]) if key in book else "")
        rows.append(row)
    table(rows, stream)
    if plot is not None:
        plot_curves(c, runs, labels, Path(plot))
        (stream or sys.stdout).write(f"wrote {plot}\n")
    return rows


def plot_curves(c, runs, labels, path: Path) -> None:
    """Each run's validation curve (test where it has none, training for the linear models) on shared axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("acc", "accuracy"), ("loss", "loss"), ("ppl", "perplexity")]
    present = [(s, t) for s, t in groups if any(f"{p}/{s}" in r.data.metrics for r in runs for p in
                                                 ("val", "test", "train"))]
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.6), squeeze=False)
    for ax, (suffix, title) in zip(axes[0], present):
        for run, label in zip(runs, labels):
            key = next((f"{p}/{suffix}" for p in ("val", "test", "train") if f"{p}/{suffix}" in run.data.metrics),
                       None)
            if key:
                history = c.get_metric_history(run.info.run_id, key)
                ax.plot([m.step for m in history], [m.value for m in history], marker="o", label=f"{label} {key}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
