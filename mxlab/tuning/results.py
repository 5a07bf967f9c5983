"""What a study found: trial counts, the best trial, the parent run's report and plots, and the dashboard."""
from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from mxlab.tuning.storage import open_storage, quiet_optuna, redact, storage_url


def counts(study) -> dict[str, int]:
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def best_trial(study):
    """The best COMPLETE trial, or None while there is none."""
    try:
        return study.best_trial
    except ValueError:
        return None


def summary(study, storage_url_: str, parent_run_id: str | None) -> dict:
    best = best_trial(study)
    return {
        "study": study.study_name,
        "storage": redact(storage_url_),
        "n_trials": len(study.get_trials(deepcopy=False)),
        "states": counts(study),
        "best_value": best.value if best else None,
        "best_params": best.params if best else {},
        "best_trial": best.number if best else None,
        "best_run_id": best.user_attrs.get("mlflow.run_id") if best else None,
        "parent_run_id": parent_run_id,
    }


def write_plots(study, folder: Path) -> dict[str, str]:
    """The study's plots as self-contained HTML; a plot that cannot be drawn yet is skipped with its reason."""
    import optuna.visualization as vis

    plots = {
        "optimization_history": vis.plot_optimization_history,
        "param_importances": vis.plot_param_importances,
        "parallel_coordinate": vis.plot_parallel_coordinate,
        "intermediate_values": vis.plot_intermediate_values,
    }
    complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    skipped = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, plot in plots.items():
        if name == "param_importances" and complete < 2:
            skipped[name] = f"needs at least 2 COMPLETE trials, the study has {complete}"
            continue
        try:
            with quiet_optuna():
                fig = plot(study)
            fig.write_html(str(folder / f"{name}.html"), include_plotlyjs=True, full_html=True)
        except Exception as exc:   # a plot is a report, not the study: never fail the parent for one
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return skipped


def log_parent_results(c, run_id: str, study, result: dict) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(f"trials.{state.lower()}", float(n), now, 0) for state, n in result["states"].items()]
    if result["best_value"] is not None:
        metrics.append(Metric("best_value", float(result["best_value"]), now, 0))
    params = [Param(f"best.{k}", str(v)) for k, v in result["best_params"].items()]
    if result["best_trial"] is not None:
        params.append(Param("best.trial", str(result["best_trial"])))
    c.log_batch(run_id, metrics=metrics, params=params)
    with tempfile.TemporaryDirectory(prefix="mxlab-study-") as tmp:
        folder = Path(tmp)
        skipped = write_plots(study, folder / "plots")
        if skipped:
            c.set_tag(run_id, "mxlab.plots_skipped", json.dumps(skipped)[:5000])
        (folder / "study.json").write_text(json.dumps({**result, "plots_skipped": skipped}, indent=2))
        with contextlib.suppress(Exception):   # pandas is optional for Optuna; the table is a convenience
            study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        c.log_artifacts(run_id, str(folder))


def load_study(name: str, study: str | None = None, storage: str | None = None, root: Path | None = None):
    import optuna

    url = storage_url(storage, root)
    study_name = study or name
    store = open_storage(url, heartbeat=None)
    try:
        store.get_study_id_from_name(study_name)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(store)) or "(none)"
        raise ValueError(f"no study {study_name!r} in {redact(url)}; studies there: {known}. "
                         f"Run: mxlab tune {name}") from None
    with quiet_optuna():
        return optuna.load_study(study_name=study_name, storage=store), url


def best(name: str, study: str | None = None, storage: str | None = None, root: Path | None = None) -> dict:
    """The best trial of a study: what ``mxlab best`` prints."""
    s, url = load_study(name, study, storage, root)
    t = best_trial(s)
    if t is None:
        raise ValueError(f"study {s.study_name!r} in {redact(url)} has no COMPLETE trial yet "
                         f"({', '.join(f'{k} {v}' for k, v in counts(s).items() if v)})")
    return {"study": s.study_name, "storage": redact(url), "trial": t.number, "value": t.value,
            "metric": s.user_attrs.get("metric"), "direction": s.direction.name.lower(), "params": t.params,
            "mlflow_run_id": t.user_attrs.get("mlflow.run_id"), "tune_overrides": s.user_attrs.get("overrides", []),
            "n_trials": len(s.get_trials(deepcopy=False))}


def best_spec(name: str, overrides: Sequence[str] = (), study: str | None = None, storage: str | None = None,
              root: Path | None = None):
    """The experiment's spec with the best trial's params on top (after ``overrides``), and the tags linking them."""
    info = best(name, study, storage, root)
    from mxlab.spec import load_spec

    spec = load_spec(name, overrides, root)
    spec = spec.replace(**info["params"])
    return spec, {"mxlab.study": info["study"], "mxlab.trial": str(info["trial"]),
                  "mxlab.study_storage": info["storage"]}


def dashboard(storage: str | None = None, port: int = 8080, root: Path | None = None) -> None:
    """optuna-dashboard on the study storage, on 127.0.0.1 only; the URL stays out of the process list."""
    from mxlab import servers

    url = storage_url(storage, root)
    print(f"mxlab dashboard: Optuna dashboard on http://127.0.0.1:{port} (storage {redact(url)})", file=sys.stderr)
    servers.dashboard(open_storage(url, heartbeat=None), port)
