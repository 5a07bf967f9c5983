"""Book parity: the book's settings over seeds, by mxlab and by the book's own code, in ``docs/results.md``.

Three numbers per row: what *Dive into Deep Learning*, Chinese edition (d2l-zh, MXNet code, final ``v1``
branch, January 2019 build) printed; the book's own code run here (:mod:`mxlab.parity`); and mxlab. Results
accumulate in ``docs/results.json``, so reproducing one experiment updates its rows and keeps the others; the
Markdown is rebuilt from it. ``preset`` rows (a study's ``tuned.yaml``) also rebuild ``docs/tuning-results.md``
(:mod:`mxlab.presets`).
"""
from __future__ import annotations

import json
import math
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

from mxlab import devices
from mxlab.spec import load_spec
from mxlab.workspace import experiment_names, file_lock, presets, root as workspace_root


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

# The recurrent rows' text: the book's cannot be downloaded here, so both sides train on the Tang poems.
TANG = "book: Jay Chou lyrics; here: tang300 (both: first 10,000 characters)"
UNRECORDED = "book: Jay Chou lyrics, perplexity not on record; here: tang300 (both: first 10,000 characters)"

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
        note=TANG),
    Row("rnn_scratch", {"train/ppl": 1.313}, "adjacent", ("data.sampling=adjacent",), book_seconds=0.27,
        at_epoch=200, note=TANG),
    Row("rnn", {"train/ppl": 2.647}, book_seconds=0.06, at_epoch=200, note=TANG),
    # The book's output cells for 6.7 and 6.8 are not on record here: no printed number, its code over seeds instead.
    Row("gru", {}, at_epoch=160, note=UNRECORDED),
    Row("lstm", {}, at_epoch=160, note=UNRECORDED),
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


def primary(metrics: dict, keys=SHOWN) -> str:
    """The metric a row is judged on, of ``keys`` (the book's): test accuracy, else perplexity, else the first."""
    order = ("test/acc", "train/ppl", *keys)
    return next((k for k in order if k in keys and k in metrics), "")


def meets_book_code(ours: dict, book_code: dict, keys=SHOWN) -> str:
    """``yes``/``no``: mxlab's mean against the book's code here on the primary metric, else empty.

    Accuracy: within 0.01 below, or better. Perplexity: within 1% above, or better. No verdict for a weight
    norm (no better side) nor for linear regression's loss (the book prints it over all examples after the
    epoch, mxlab averages the epoch's batches: not the same quantity).
    """
    key = primary(book_code, keys)
    if key not in ours or not key.endswith(("/acc", "/ppl")):
        return ""
    if key.endswith("/acc"):
        return "yes" if ours[key] >= book_code[key] - 0.01 else "no"
    return "yes" if ours[key] <= book_code[key] * 1.01 else "no"


def difference(ours: dict, book_code: dict, keys=SHOWN) -> str:
    """mxlab's mean minus the book's code's on the primary metric, with the standard error of that difference
    over the seeds: a verdict decided by less than one standard error says as much about the seeds as the code."""
    key = primary(book_code["metrics"], keys)
    mine = [m[key] for m in ours.get("per_seed") or [] if key in m]
    theirs = [m[key] for m in book_code.get("per_seed") or [] if key in m]
    if len(mine) < 2 or len(theirs) < 2:
        return ""
    error = (statistics.variance(mine) / len(mine) + statistics.variance(theirs) / len(theirs)) ** 0.5
    return f" ({statistics.mean(mine) - statistics.mean(theirs):+.2g}, s.e. {error:.2g})"


def seed_list(spec, seeds: int, first_seed: int | None) -> list[int]:
    first = spec.train.seed if first_seed is None else first_seed
    return [first + offset for offset in range(seeds)]


def run_row(row: Row, seeds: int = 1, first_seed: int | None = None, preset: str | None = None) -> dict:
    """Train the row's experiment with ``seeds`` seeds (the spec's, then the next ones); metrics are their mean.

    At the book's high learning rates the last epoch's test accuracy moves by a point or two with the shuffle
    order, so several seeds say more than one; each seed's values are kept too. ``preset`` trains with
    ``experiments/<name>/<preset>.yaml`` over the spec (on the full training split, as the book does).
    """
    from mxlab.runner import run

    base = load_spec(row.experiment, list(row.overrides), preset=preset)
    per_seed, seconds, run_ids = [], [], []
    tags = {"mxlab.reproduce": row.key, **({"mxlab.preset": preset} if preset else {})}
    for seed in seed_list(base, seeds, first_seed):
        result = run(base.replace(**{"train.seed": seed}), tags=tags)
        history = result.history
        compared = history[row.at_epoch - 1] if row.at_epoch and len(history) >= row.at_epoch else history[-1]
        per_seed.append({k: v for k, v in compared.items() if k in SHOWN})
        seconds += [h["perf/epoch_seconds"] for h in history]
        run_ids.append(result.run_id)
    out = {
        "metrics": {k: sum(m[k] for m in per_seed) / len(per_seed) for k in per_seed[0]},
        "per_seed": per_seed,
        "seeds": seed_list(base, seeds, first_seed),
        "epoch": compared["epoch"],
        "epochs": len(history),
        "seconds_per_epoch": sum(seconds) / len(seconds),
        "device": f"{devices.describe(devices.contexts(base.train.device))} ({platform.machine()}, {_cores()} cores)",
        "run_ids": run_ids,
    }
    if preset:
        out["spec"] = {k: v for k, v in base.flat().items() if k.startswith(("train.", "model.", "data."))}
    return out


def run_book_code(row: Row, seeds: int = 1, first_seed: int | None = None) -> dict:
    """The row's chapter code, trained by ``d2lzh``'s own loop (:mod:`mxlab.parity`), over the same seeds.

    A recurrent row stops at the epoch it is compared at: the later epochs cannot change that number.
    """
    from mxlab import parity

    base = load_spec(row.experiment, list(row.overrides))
    kwargs = ({"epochs": row.at_epoch, "at_epoch": row.at_epoch} if row.at_epoch else
              {"epochs": base.train.epochs, "batch_size": base.data.batch_size})
    return parity.run_seeds(row.key, seed_list(base, seeds, first_seed), **kwargs)


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


def summary(got: dict, keys) -> str:
    """One stored result as a cell: the primary metric's mean +- standard deviation over n seeds, then the rest."""
    metrics = got["metrics"]
    key = primary(metrics, keys)
    values = [m[key] for m in got.get("per_seed") or [metrics]]
    cell = f"{key} {_fmt(metrics[key])}"
    if len(values) > 1:
        cell += f" ± {statistics.stdev(values):.2g}"
    cell += f" (n={len(values)})"
    rest = _values(metrics, [k for k in keys if k != key])
    if rest:
        cell += f"; {rest}"
    if got.get("epochs") and got["epoch"] != got["epochs"]:
        cell += f" (epoch {got['epoch']} of {got['epochs']})"
    elif got.get("epoch") and any(k.endswith("/ppl") for k in metrics):
        cell += f" (epoch {got['epoch']})"
    return cell


INTRO = """# Book parity

Three numbers per row. **Book (printed)**: *Dive into Deep Learning*, Chinese edition (d2l-zh), MXNet code,
final `v1` branch, as printed by its January 2019 build (last epoch; GPU seconds per epoch). **Book's code
here**: the chapter's own network trained by the book's own functions from `d2lzh` 1.0.0 (`train_ch3`,
`train_ch5`, `train_and_predict_rnn`, `train_and_predict_rnn_gluon`; see `mxlab/parity.py`) on this machine's
MXNet 1.9.1, fed the same verified data as mxlab. Linear regression and weight decay have no `d2lzh` train
function: there it is the chapter's own loop around `d2lzh`'s `data_iter`, `linreg`, `squared_loss` and `sgd`,
on the chapter's own synthetic draw. **mxlab**: `mxlab reproduce` with the book's settings. Both are the mean
± sample standard deviation of the first metric over n seeds (the same seed numbers for both); the other
metrics are means. The verdict compares mxlab with the book's code here, on the same machine and data: test
accuracy within 0.01 below it or better; perplexity within 1% above it or better (the recurrent rows' book code
stops at the compared epoch). Beside it, mxlab's mean minus the book's code's, and the standard error of that
difference over the seeds: at the book's high learning rates one seed's last epoch moves by a few points.
Linear regression's loss gets no verdict: the book prints it over all examples after the epoch, mxlab averages
the epoch's batches. The printed numbers are single 2019 GPU runs, which the book's own code does not reach
here either. `mxlab reproduce --code both --seeds 5 --first-seed 1` rewrites
this file from `results.json`; rows not run say so: no number is invented. "-": no book code for the row.
"""


def render(results: dict) -> str:
    from mxlab.parity import has_book_code

    lines = [INTRO,
             "| experiment | book (printed) | book's code here | mxlab | mxlab vs book's code | device | "
             "s/epoch (mxlab) | s/epoch (book's code) | s/epoch (book, GPU) | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        keys = [k for k in SHOWN if k in row.book] or list(SHOWN)
        book = _values(row.book, keys) or "-"
        if row.at_epoch and row.book:
            book += f" (epoch {row.at_epoch})"
        got = results.get(row.key) or {}
        code = got.get("book_code")
        ours = got if got.get("metrics") else None
        verdict = meets_book_code(ours["metrics"], code["metrics"], keys) if ours and code else ""
        cells = [summary(code, keys) if code else "not run" if has_book_code(row.key) else "-",
                 summary(ours, keys) if ours else "not run on this machine",
                 verdict + difference(ours, code, keys) if verdict else "",
                 ours["device"] if ours else "", _fmt(ours["seconds_per_epoch"]) if ours else "",
                 _fmt(code["seconds_per_epoch"]) if code else "", _fmt(row.book_seconds), row.note]
        lines.append(f"| {row.key} | {book} | " + " | ".join(cells) + " |")
    norms = {k: results[k]["metrics"].get("l2_norm_w") for k in results
             if k.startswith("weight_decay") and results[k].get("metrics")}
    for name in ("weight_decay_scratch", "weight_decay"):
        lam0, lam3 = norms.get(f"{name} lambda=0"), norms.get(f"{name} lambda=3")
        if lam0 and lam3:
            lines.append("")
            lines.append(f"{name}: lambda=3 shrinks the L2 norm of w {lam0 / lam3:,.0f}x against lambda=0 "
                         f"({_fmt(lam0)} -> {_fmt(lam3)}).")
    return "\n".join(lines) + "\n"


CODES = ("mxlab", "book", "both")


def _store(docs: Path, key: str, field: str | None, got: dict) -> dict:
    """Keep one result as it lands (``field``: None for mxlab's own, ``book_code``, or ``presets.<name>``).

    Another reproduce may have landed rows meanwhile, hence the lock around read, merge and write.
    """
    store = docs / "results.json"
    with file_lock(docs / ".results.lock"):
        results = json.loads(store.read_text()) if store.exists() else {}
        entry = results.setdefault(key, {})
        if field is None:
            entry.update(got)
        elif field.startswith("presets."):
            entry.setdefault("presets", {})[field.split(".", 1)[1]] = got
        else:
            entry[field] = got
        store.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        (docs / "results.md").write_text(render(results))
    return results


def reproduce(names: list[str] | None = None, docs: Path | None = None, seeds: int = 1, *, code: str = "mxlab",
              first_seed: int | None = None, preset: str | None = None, render_only: bool = False) -> Path:
    """Run rows and rewrite ``docs/results.md``: mxlab (``code`` mxlab), the book's code (book) or both.

    ``preset`` trains mxlab with that preset instead and rewrites ``docs/tuning-results.md`` too, with the
    evidence of the studies behind the presets. ``render_only`` rewrites both files from what is stored.
    """
    if code not in CODES:
        raise ValueError(f"--code {code!r}: allowed: {', '.join(CODES)}")
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: allowed: an integer >= 1")
    if preset and code != "mxlab":
        raise ValueError(f"--preset {preset} trains mxlab with the preset; the book's code has none: drop --code")
    from mxlab.parity import has_book_code

    docs = docs or workspace_root() / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    rows = [] if render_only else rows_for(names)
    if preset:
        rows = [r for r in rows if not r.overrides and (names or preset in presets(r.experiment))]
    if code == "book":
        rows = [r for r in rows if has_book_code(r.key)]
    for row in rows:
        if code in ("book", "both") and has_book_code(row.key):
            _store(docs, row.key, "book_code", run_book_code(row, seeds, first_seed))
        if code in ("mxlab", "both"):
            got = run_row(row, seeds, first_seed, preset)
            _store(docs, row.key, f"presets.{preset}" if preset else None, got)
    store = docs / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    (docs / "results.md").write_text(render(results))
    if preset or render_only:
        from mxlab.presets import write_report

        write_report(results, docs, preset or "tuned")
    return docs / "results.md"
