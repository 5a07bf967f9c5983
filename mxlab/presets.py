"""Presets written by a study: ``experiments/<name>/<preset>.yaml`` with the best trial's params and a header.

The header says where the values came from (study, storage, trials, best value and metric, the overrides the
study ran with, date, mxlab commit), so that a committed preset can be traced and its study rerun. A preset
file that mxlab did not write (no header line) is never overwritten: it may hold a person's choices.
"""
from __future__ import annotations

import datetime
import json
import subprocess
from collections import Counter
from pathlib import Path

import yaml

from mxlab import workspace

MARK = "# Written by `mxlab tune --save-preset`"


def nest(params: dict) -> dict:
    """``{"train.lr": 0.3}`` -> ``{"train": {"lr": 0.3}}``, floats to 6 significant digits."""
    out: dict = {}
    for key, value in sorted(params.items()):
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = float(f"{value:.6g}") if isinstance(value, float) else value
    return out


def commit(folder: Path) -> str:
    """The commit of the repository holding ``folder``, ``+dirty`` when it has changes; ``unknown`` outside git."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def header(name: str, preset: str, info: dict, states: dict, date: datetime.datetime | None = None) -> str:
    date = date or datetime.datetime.now(datetime.timezone.utc)
    folder = workspace.experiment_dir(name)
    tried = ", ".join(f"{k} {v}" for k, v in states.items() if v)
    lines = [
        f"{MARK}: the best trial of a study.",
        f"# Applied by: mxlab run {name} --preset {preset}  (defaults < experiment.yaml < this file < key=value)",
        f"# study: {info['study']} ({info['storage']})",
        f"# trials: {info['n_trials']} ({tried})",
        f"# best value: {info['metric']} = {info['value']:.6g} ({info['direction']}), trial {info['trial']}",
        f"# tuned with: {' '.join(info.get('tune_overrides') or []) or '(no overrides)'}",
        f"# date: {date.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"# mxlab commit: {commit(folder)}",
    ]
    return "\n".join(lines) + "\n"


def check_name(preset: str) -> None:
    if not workspace.NAME_RE.match(preset) or preset == "experiment":
        raise ValueError(f"--save-preset {preset!r}: allowed: letters, digits, '_' and '-', not 'experiment'")


def save_preset(name: str, preset: str, study: str | None = None, storage: str | None = None,
                root: Path | None = None) -> Path:
    """Write the best trial of ``name``'s study as ``experiments/<name>/<preset>.yaml`` and check it loads."""
    from mxlab.data.download import atomic_write
    from mxlab.spec import load_spec
    from mxlab.tuning.results import best, counts, load_study

    check_name(preset)
    info = best(name, study, storage, root)
    load_spec(name, root=root).replace(**info["params"])   # refused values fail before any file is written
    s, _ = load_study(name, study, storage, root)
    path = workspace.experiment_dir(name, root) / f"{preset}.yaml"
    if path.exists() and not path.read_text().startswith(MARK):
        raise ValueError(f"{path} exists and was not written by mxlab: not overwriting it; choose another "
                         f"--save-preset name or remove the file")
    text = header(name, preset, info, counts(s)) + yaml.safe_dump(nest(info["params"]), sort_keys=True)
    atomic_write(path, text)
    load_spec(name, preset=preset, root=root)   # a preset the spec refuses fails here, naming the file
    return path


# ---------------------------------------------------------------- the studies behind the presets, as evidence

def study_of(path: Path) -> str | None:
    """The study name in a preset's header, None for a preset mxlab did not write."""
    for line in path.read_text().splitlines():
        if line.startswith("# study: "):
            return line[len("# study: "):].split(" (")[0]
    return None


def evidence(name: str, preset: str, plots: Path, root: Path | None = None) -> dict:
    """What the preset's study measured: trials by state, wall time, the best trials, importances; and its
    optimisation-history and parameter-importance plots as PNG under ``plots``."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as vis

    from mxlab.tuning.results import best_trial, counts, load_study
    from mxlab.tuning.storage import quiet_optuna

    study, url = load_study(name, study_of(workspace.preset_path(name, preset, root)), root=root)
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = best_trial(study)
    maximize = study.direction.name == "MAXIMIZE"
    top = sorted(complete, key=lambda t: t.value, reverse=maximize)[:5]
    plots.mkdir(parents=True, exist_ok=True)
    files = {}
    with quiet_optuna():
        importances = optuna.importance.get_param_importances(study) if len(complete) >= 2 else {}
        for kind, plot in (("history", vis.plot_optimization_history), ("importances", vis.plot_param_importances)):
            if kind == "importances" and not importances:
                continue
            ax = plot(study)
            ax.figure.set_size_inches(7, 4)
            ax.figure.tight_layout()
            ax.figure.savefig(plots / f"{name}-{kind}.png", dpi=80)
            matplotlib.pyplot.close(ax.figure)
            files[kind] = f"{plots.name}/{name}-{kind}.png"
    return {
        "study": study.study_name, "metric": study.user_attrs.get("metric"), "direction": study.direction.name.lower(),
        "overrides": study.user_attrs.get("overrides", []), "states": counts(study), "n_trials": len(trials),
        "wall_seconds": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
        "best": {"trial": best.number, "value": best.value, "params": best.params} if best else None,
        "top": [{"trial": t.number, "value": t.value, "params": t.params} for t in top],
        "baseline": next(({"trial": t.number, "value": t.value, "state": t.state.name} for t in trials
                          if t.user_attrs.get("mxlab.baseline")), None),
        "pruned_at": sorted(max(t.intermediate_values, default=0) for t in trials if t.state.name == "PRUNED"),
        "importances": dict(importances), "plots": files,
    }


def write_report(results: dict, docs: Path, preset: str = "tuned") -> Path:
    """``docs/tuning-results.md`` from ``results.json`` and the studies' evidence (kept in ``tuning.json``, so the
    page can be rebuilt where the studies' storage is not)."""
    store = docs / "tuning.json"
    stored = json.loads(store.read_text()) if store.exists() else {}
    for key, entry in results.items():
        if preset in entry.get("presets", {}):
            try:
                stored[key] = evidence(key, preset, docs / "tuning")
            except (ValueError, KeyError) as exc:   # no study here: keep what was measured where it was
                if key not in stored:
                    stored[key] = {"missing": str(exc)}
    store.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    path = docs / "tuning-results.md"
    path.write_text(render_report(results, stored, preset))
    return path


def _seconds(value) -> str:
    return "" if value is None else f"{value / 60:.0f} min"


def render_report(results: dict, studies: dict, preset: str = "tuned") -> str:
    from mxlab.reproduce import ROWS, SHOWN, _fmt, primary, summary

    printed = {r.key: r.book for r in ROWS}
    lines = [TUNING_INTRO.format(preset=preset),
             "| experiment | book (printed) | book's code here | mxlab, book's settings | mxlab, preset | "
             "preset beats printed | preset values | trials (complete / pruned / failed) | study wall time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, entry in sorted(results.items()):
        got = entry.get("presets", {}).get(preset)
        if not got:
            continue
        study = studies.get(key, {})
        keys = [primary(got["metrics"], [k for k in SHOWN if k in (printed.get(key) or SHOWN)])]
        book, ours = printed.get(key, {}).get(keys[0]), got["metrics"][keys[0]]
        better = None if book is None else ours > book if keys[0].endswith("/acc") else ours < book
        states = study.get("states", {})
        values = ", ".join(f"{k} {_fmt(v)}" for k, v in sorted((study.get("best") or {}).get("params", {}).items()))
        lines.append(" | ".join([
            f"| {key}", f"{keys[0]} {_fmt(book)}" if book else "-",
            summary(entry["book_code"], keys) if entry.get("book_code") else "not run",
            summary(entry, keys) if entry.get("metrics") else "not run", summary(got, keys),
            "" if better is None else "yes" if better else "no",
            values or "(study not found)",
            f"{study.get('n_trials', '?')} ({states.get('COMPLETE', '?')} / {states.get('PRUNED', '?')} / "
            f"{states.get('FAIL', '?')})", _seconds(study.get("wall_seconds")) + " |"]))
    missing = [k for k in STUDIED if preset not in results.get(k, {}).get("presets", {})]
    if missing:
        lines += ["", f"Not run to the end here yet (no {preset} preset trained over seeds): {', '.join(missing)}."]
    for key, study in sorted(studies.items()):
        if not study.get("best"):
            continue
        importances = sorted(study["importances"].items(), key=lambda kv: -kv[1])
        baseline = study.get("baseline") or {}
        stops = ", ".join(f"epoch {e}: {n}" for e, n in sorted(Counter(study["pruned_at"]).items())) or "none"
        lines += ["", f"## {key}", "",
                  f"Study `{study['study']}`: {study['metric']} ({study['direction']}) on the held-out split; "
                  f"best trial {study['best']['trial']} at {_fmt(study['best']['value'])}; the book's own values "
                  f"(the baseline, trial {baseline.get('trial', '?')}) reached {_fmt(baseline.get('value'))}. "
                  f"Parameter importances (fANOVA): "
                  f"{', '.join(f'{k} {v:.2f}' for k, v in importances) or 'too few trials'}. Pruned trials, by the "
                  f"epoch they stopped after: {stops}.",
                  "", "| trial | " + study["metric"] + " | params |", "|---|---|---|"]
        lines += [f"| {t['trial']} | {_fmt(t['value'])} | "
                  + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(t["params"].items())) + " |" for t in study["top"]]
        lines.append("")
        lines += [f"![{key} {kind}]({file})" for kind, file in sorted(study["plots"].items())]
    return "\n".join(lines) + "\n"


STUDIED = ("softmax", "mlp", "dropout", "lenet", "batchnorm")   # the rows the book-budget studies cover

TUNING_INTRO = """# Tuning results: Optuna against the book, at the book's budget

Each study searched the mission's space (learning rate and weight decay on log scales, each dropout rate the
model has, over the experiment's `search.space`, else the default space) at the book's own budget, 5 epochs
and batch 256, with TPE (seed 0) and 30 trials, choosing on `val/acc` of a held-out 10% of the training split
(the test set is never tuned on). Pruning: Optuna's median pruner once 5 trials have finished, from the second
epoch on. In a first attempt the command line's default median pruner (2 startup trials, from the first epoch)
stopped nearly every trial after one epoch, where plain SGD at these learning rates ranks trials poorly, and
kept the baseline as the best of mlp; those studies (`softmax`, `mlp`) stay in the store. The call, per
experiment:

```python
import optuna, mxlab
from mxlab.presets import save_preset
pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
mxlab.tune(NAME, 30, study=f"{{NAME}}-book-budget", seed=0, pruner=pruner)
save_preset(NAME, "{preset}", study=f"{{NAME}}-book-budget")
```

The best trial's values are `experiments/<name>/{preset}.yaml`; each preset was then trained on the full
training split over several seeds (`mxlab reproduce NAME --preset {preset} --seeds 5 --first-seed 1`). Test
accuracy: mean ± sample standard deviation (n seeds). "Book's code here" is the chapter's code trained by
`d2lzh`'s own functions on this machine ([results.md](results.md)). Where a preset does not beat the printed
number, its study's evidence below is the report: the best trials, the importances and the plots. This page is
written from `results.json` and `tuning.json` (`mxlab reproduce --render`).
"""
