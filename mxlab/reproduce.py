"""Book parity: run experiments with the book's settings and write ``docs/results.md`` beside the book's numbers.

The book's numbers are those printed by *Dive into Deep Learning*, Chinese edition (d2l-zh, MXNet code, final
``v1`` branch, January 2019 build; last epoch; GPU seconds per epoch). Results accumulate in ``docs/results.json``, so
reproducing one experiment updates its rows and keeps the others; the Markdown table is rebuilt from it.
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

from mxlab import devices
from mxlab.spec import load_spec
from mxlab.workspace import experiment_names, file_lock, root as workspace_root


@dataclass(frozen=True)
class Row:
    """One comparison: an experiment (with overrides for a variant) and what the book reports for it."""

    experiment: str
    book: dict                      # metric -> the book's value
    variant: str = ""
    overrides: tuple = ()
    book_seconds: float | None = None
    at_epoch: int | None = None     # compare at this epoch instead of the last (the book's RNN figures)
    note: str = ""
    runs_here: bool = True          # within reach of 2 CPU cores in about an hour for the whole table

    @property
    def key(self) -> str:
        return f"{self.experiment} {self.variant}".strip()


FMNIST = "28x28"
ROWS = [
    Row("linreg_scratch", {"train/loss": 5.1e-5}),
    Row("linreg", {"train/loss": 5.0e-5}),
    Row("softmax_scratch", {"train/loss": .4895, "train/acc": .835, "test/acc": .840}),
    Row("softmax", {"train/loss": .4895, "train/acc": .834, "test/acc": .841}),
    Row("mlp_scratch", {"train/loss": .3669, "train/acc": .864, "test/acc": .861}),
    Row("mlp", {"train/loss": .3763, "train/acc": .860, "test/acc": .872}),
    Row("weight_decay_scratch", {"l2_norm_w": 11.6}, "lambda=0", ("train.wd=0",)),
    Row("weight_decay_scratch", {"l2_norm_w": 0.042}, "lambda=3", ("train.wd=3",)),
    Row("weight_decay", {"l2_norm_w": 13.3}, "lambda=0", ("train.wd=0",)),
    Row("weight_decay", {"l2_norm_w": 0.033}, "lambda=3", ("train.wd=3",)),
    Row("dropout_scratch", {"train/loss": .4160, "train/acc": .848, "test/acc": .863}),
    Row("dropout", {"train/loss": .4241, "train/acc": .846, "test/acc": .860}),
    Row("custom_block", {}, note="not in the book's results"),
    Row("lenet", {"train/loss": .6704, "train/acc": .733, "test/acc": .754}, book_seconds=1.8),
    Row("alexnet", {"train/loss": .4256, "train/acc": .845, "test/acc": .867}, book_seconds=65.8, runs_here=False),
    Row("vgg", {"train/loss": .2649, "train/acc": .902, "test/acc": .909}, book_seconds=135.4, runs_here=False),
    Row("nin", {"train/loss": .5713, "train/acc": .791, "test/acc": .812}, book_seconds=96.4, runs_here=False),
    Row("googlenet", {"train/loss": .3376, "train/acc": .872, "test/acc": .883}, book_seconds=74.0,
        runs_here=False),
    Row("batchnorm_scratch", {"train/loss": .3051, "train/acc": .890, "test/acc": .870}, book_seconds=3.9),
    Row("batchnorm", {"train/loss": .3071, "train/acc": .889, "test/acc": .881}, book_seconds=2.1),
    Row("resnet", {"train/loss": .1093, "train/acc": .961, "test/acc": .913}, book_seconds=57.4, runs_here=False),
    Row("densenet", {"train/loss": .2100, "train/acc": .923, "test/acc": .879}, book_seconds=59.6,
        runs_here=False),
    Row("rnn_scratch", {"train/ppl": 1.598}, "random", ("data.sampling=random",), book_seconds=0.27, at_epoch=200,
        note="book: Jay Chou lyrics; here: tang300 (both: first 10,000 characters)"),
    Row("rnn_scratch", {"train/ppl": 1.313}, "adjacent", ("data.sampling=adjacent",), book_seconds=0.27,
        at_epoch=200, note="book: Jay Chou lyrics; here: tang300 (both: first 10,000 characters)"),
    Row("rnn", {"train/ppl": 2.647}, book_seconds=0.06, at_epoch=200, note="book: Jay Chou lyrics; here: tang300 (both: first 10,000 characters)"),
    Row("gru", {}, note="the book prints samples, no perplexity table"),
    Row("lstm", {}, note="the book prints samples, no perplexity table"),
]
SHOWN = ("train/loss", "train/acc", "test/acc", "train/ppl", "l2_norm_w")


def rows_for(names: list[str] | None) -> list[Row]:
    if not names:
        return [r for r in ROWS if r.runs_here]
    known = set(experiment_names())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [r for r in ROWS if r.experiment in names]


def meets_book(row: Row, ours: dict) -> str:
    """``yes``/``no`` where the book has a test accuracy (ours must reach it minus 0.01), else empty."""
    if "test/acc" not in row.book or "test/acc" not in ours:
        return ""
    return "yes" if ours["test/acc"] >= row.book["test/acc"] - 0.01 else "no"


def run_row(row: Row, seeds: int = 1) -> dict:
    """Train the row's experiment with ``seeds`` seeds (the spec's, then the next ones); metrics are their mean.

    At the book's high learning rates the last epoch's test accuracy moves by a point or two with the shuffle
    order, so several seeds say more than one; each seed's values are kept too.
    """
    from mxlab.runner import run

    base = load_spec(row.experiment, list(row.overrides))
    per_seed, seconds, run_ids = [], [], []
    for offset in range(seeds):
        spec = base.replace(**{"train.seed": base.train.seed + offset})
        result = run(spec, tags={"mxlab.reproduce": row.key})
        history = result.history
        compared = history[row.at_epoch - 1] if row.at_epoch and len(history) >= row.at_epoch else history[-1]
        per_seed.append({k: v for k, v in compared.items() if k in SHOWN})
        seconds += [h["perf/epoch_seconds"] for h in history]
        run_ids.append(result.run_id)
    return {
        "metrics": {k: sum(m[k] for m in per_seed) / len(per_seed) for k in per_seed[0]},
        "per_seed": per_seed,
        "seeds": [base.train.seed + offset for offset in range(seeds)],
        "epoch": compared["epoch"],
        "epochs": len(history),
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "device": f"{devices.describe(devices.contexts(base.train.device))} ({platform.machine()}, {_cores()} cores)",
        "run_ids": run_ids,
    }


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) < 1e-2 and value != 0:
        return f"{value:.2g}"
    return f"{value:.4g}" if abs(value) < 100 else f"{value:.0f}"


def _values(metrics: dict, keys) -> str:
    return " / ".join(f"{k} {_fmt(metrics[k])}" for k in keys if k in metrics)


def render(results: dict) -> str:
    lines = [
        "# Book parity",
        "",
        "The book's numbers: *Dive into Deep Learning*, Chinese edition (d2l-zh), MXNet code, final `v1` branch,",
        "as printed by its January 2019 build: last epoch, GPU seconds per epoch. Ours: `mxlab reproduce`, which",
        "rewrites this file. Test accuracy must reach the book's minus 0.01 where the book has one (ours: the mean",
        "over the seeds run). Rows not run here say so: no number is invented. The README's \"Book parity\" section",
        "says what the book's own code gets on the same machine.",
        "",
        "| experiment | book | ours | test acc >= book - 0.01 | device | s/epoch (ours) | s/epoch (book, GPU) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        keys = [k for k in SHOWN if k in row.book] or [k for k in SHOWN]
        book = _values(row.book, keys) or "-"
        if row.at_epoch and row.book:
            book += f" (epoch {row.at_epoch})"
        got = results.get(row.key)
        if got:
            ours = _values(got["metrics"], keys)
            if len(got.get("per_seed", [])) > 1:
                key = "test/acc" if "test/acc" in got["metrics"] else next(k for k in keys if k in got["metrics"])
                values = [m[key] for m in got["per_seed"]]
                ours += f" (mean of {len(values)} seeds; {key} {_fmt(min(values))}-{_fmt(max(values))})"
            if got["epoch"] != got["epochs"]:
                ours += f" (epoch {got['epoch']} of {got['epochs']})"
            cells = [ours, meets_book(row, got["metrics"]), got["device"], _fmt(got["seconds_per_epoch"])]
        else:
            cells = ["not run on this machine", "", "", ""]
        lines.append(f"| {row.key} | {book} | " + " | ".join(cells) +
                     f" | {_fmt(row.book_seconds)} | {row.note} |")
    norms = {k: results[k]["metrics"].get("l2_norm_w") for k in results if k.startswith("weight_decay")}
    for name in ("weight_decay_scratch", "weight_decay"):
        lam0, lam3 = norms.get(f"{name} lambda=0"), norms.get(f"{name} lambda=3")
        if lam0 and lam3:
            lines.append("")
            lines.append(f"{name}: lambda=3 shrinks the L2 norm of w {lam0 / lam3:,.0f}x against lambda=0 "
                         f"({_fmt(lam0)} -> {_fmt(lam3)}).")
    return "\n".join(lines) + "\n"


def reproduce(names: list[str] | None = None, docs: Path | None = None, seeds: int = 1) -> Path:
    docs = docs or workspace_root() / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    store = docs / "results.json"
    for row in rows_for(names):
        got = run_row(row, seeds)
        # Each row is kept as it lands; another reproduce may have landed rows meanwhile, hence the lock.
        with file_lock(docs / ".results.lock"):
            results = json.loads(store.read_text()) if store.exists() else {}
            results[row.key] = got
            store.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
            (docs / "results.md").write_text(render(results))
    return docs / "results.md"
