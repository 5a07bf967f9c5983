"""Optuna studies over any experiment: search space from the spec, study storage, workers, pruning, nested runs.

A study is named after the experiment (``--study`` overrides it) and lives in ``--storage URL``, else
``MXLAB_OPTUNA_STORAGE``, else ``sqlite:///<root>/mlruns/optuna.db``; running ``tune`` again resumes it and
its trials add up. Each trial trains through :func:`mxlab.tracking.run_experiment`, exactly like
``mxlab run``, as a child of one MLflow parent run per invocation; the pruner is one more callback.

States and MLflow run statuses match one to one: COMPLETE -> FINISHED, PRUNED -> KILLED (MLflow has no
"pruned"; the trial was stopped on purpose), FAIL -> FAILED, except that a trial interrupted by Ctrl-C or
SIGTERM stays KILLED like any interrupted run. Each child run carries ``optuna.state``.

Several workers need a database server (PostgreSQL): sqlite is for one worker, so ``--workers K > 1`` on
sqlite is refused rather than risking a locked or corrupted file. Heartbeats run on every database storage:
a worker that dies mid-trial stops beating, and the next worker to start a trial (or the invocation that
launched it, at its end) fails the stale trial, enqueues a retry with the same parameters, and closes its
MLflow child run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Sequence

from mxlab import spec as specs
from mxlab.spec import Spec, SpecError

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# A fraction held out for val/* when the spec trains on all of its training split: a study never tunes on test.
TUNE_VAL_FRACTION = 0.1
HEARTBEAT_SECONDS = 60     # how often a running trial proves its worker alive
MAX_RETRY = 2              # a trial whose worker died is retried this many times, then left FAIL
TRIAL_KEY = "mxlab.trial_key"   # links a trial to its MLflow child run, even across retries and storages


def _log(message: str) -> None:
    print(f"mxlab tune: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_optuna():
    """Heartbeats and stale-trial retry are marked experimental in Optuna; they are what scale-out relies on."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# ---------------------------------------------------------------- storage

def default_storage(root: Path | None = None) -> str:
    from mxlab.tracking import store_dir

    return f"sqlite:///{store_dir(root) / 'optuna.db'}"


def storage_url(url: str | None = None, root: Path | None = None) -> str:
    """``url``, else ``MXLAB_OPTUNA_STORAGE``, else the workspace's sqlite file."""
    return url or os.environ.get("MXLAB_OPTUNA_STORAGE") or default_storage(root)


def redact(url: str) -> str:
    """The storage URL without its password, fit for tags, logs and JSON."""
    from sqlalchemy.engine import URL, make_url

    try:
        u = make_url(url)
    except Exception:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1@", url)
    if u.password is None:
        return url
    return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query).render_as_string(
        hide_password=False)


def driver_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 means psycopg 3 by it, mxlab ships psycopg2."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def open_storage(url: str, *, experiment: str | None = None, heartbeat: int | None = HEARTBEAT_SECONDS,
                 root: Path | None = None):
    """An Optuna ``RDBStorage`` whose tables exist; with ``heartbeat``, stale trials are failed and retried.

    ``experiment`` names the MLflow experiment whose child runs a stale trial's retry must close.
    """
    import optuna

    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if heartbeat:
        kwargs.update(heartbeat_interval=int(heartbeat), grace_period=int(2 * heartbeat),
                      heartbeat_stale_trial_callback=StaleTrialHandler(experiment, root))
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise ValueError(f"study storage {redact(url)!r} is not supported; allowed: sqlite:///path/optuna.db "
                         f"(one worker) or postgresql://user:password@host:port/database (several workers)")
    with _quiet_optuna():
        if is_sqlite(url):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # The schema is created once, under a lock, before any other process touches the file.
            from mxlab.tracking import file_lock

            with file_lock(path.parent / ".optuna.lock"):
                return optuna.storages.RDBStorage(url, **kwargs)
        return optuna.storages.RDBStorage(driver_url(url), **kwargs)


class StaleTrialHandler:
    """Called by Optuna for a trial whose worker stopped beating: retry it and close its MLflow child run."""

    def __init__(self, experiment: str | None, root: Path | None = None):
        self.experiment, self.root = experiment, root

    def __call__(self, study, trial) -> None:
        import optuna

        with _quiet_optuna():
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
        _log(f"trial {trial.number} of study {study.study_name!r} lost its worker (no heartbeat): failed it "
             f"and queued a retry with the same parameters")
        if self.experiment and trial.user_attrs.get(TRIAL_KEY):
            with contextlib.suppress(Exception):   # the study must go on even if MLflow is unreachable
                from mxlab.tracking import client, experiment_id

                c = client(self.root)
                for run in _runs_of_key(c, experiment_id(c, self.experiment, self.root), trial.user_attrs[TRIAL_KEY]):
                    if run.info.status == "RUNNING":
                        close_child_run(c, run.info.run_id, "FAIL",
                                        error=f"worker {trial.user_attrs.get('mxlab.worker', '?')} stopped "
                                              f"beating; trial {trial.number} failed and retried")


# ---------------------------------------------------------------- the spec and its search space

def tuning_spec(name: str, overrides: Sequence[str] = (), root: Path | None = None) -> tuple[Spec, list[str]]:
    """The spec a study trains, validated with its search space before any trial or run exists.

    Returns the spec and notes on what tuning changed (the validation hold-out).
    """
    spec = specs.load_spec(name, overrides, root)
    notes = []
    if spec.search.metric.startswith("val/") and spec.data.val_fraction == 0:
        spec = spec.replace(**{"data.val_fraction": TUNE_VAL_FRACTION})
        notes.append(f"search.metric is {spec.search.metric} but data.val_fraction is 0: holding out "
                     f"data.val_fraction={TUNE_VAL_FRACTION} of the training split for validation (the test set is "
                     f"never tuned on); pass data.val_fraction=... to choose another share")
    check_space(spec)
    return spec, notes


def check_space(spec: Spec) -> None:
    """Every range's ends must make a valid spec: ``train.momentum`` up to 1.5 is refused here, not mid-study."""
    if not spec.search.space:
        raise SpecError(f"{spec.path or spec.name}: search.space is empty; allowed: a mapping of dotted keys to "
                        f"{{low, high, log}}, e.g. train.lr: {{low: 0.01, high: 0.5, log: true}}")
    for key, rng in spec.search.space.items():
        for end in ("low", "high"):
            value = _cast(spec, key, getattr(rng, end))
            try:
                trial_spec = spec.replace(**{key: value})
                if key.startswith("model."):
                    from mxlab.train import build_net

                    build_net(trial_spec)   # the builder checks its own options (dropout2 needs two layers)
            except (SpecError, ValueError) as exc:
                raise SpecError(f"{spec.path or spec.name}: search.space.{key}: {end}={getattr(rng, end)} does not "
                                f"make a valid experiment: {exc}") from None


def _cast(spec: Spec, key: str, value: float):
    return int(round(value)) if isinstance(_current(spec, key), int) else float(value)


def _current(spec: Spec, key: str):
    return specs.searchable_keys(spec)[key]


def suggest(trial, spec: Spec) -> dict[str, Any]:
    """One value per key of ``spec.search.space``; integers stay integers (``data.batch_size``)."""
    params = {}
    for key, rng in spec.search.space.items():
        if isinstance(_current(spec, key), int):
            params[key] = trial.suggest_int(key, int(round(rng.low)), int(round(rng.high)), log=rng.log)
        else:
            params[key] = trial.suggest_float(key, rng.low, rng.high, log=rng.log)
    return params


def baseline_params(spec: Spec) -> tuple[dict[str, Any], list[str]]:
    """The spec's own values for the searched keys: the first trial of a new study measures them.

    A value outside its range is moved to the nearest end, since Optuna cannot record it otherwise (``train.wd``
    0 on a log scale becomes the range's low end, about as little decay); the notes say what moved.
    """
    params, notes = {}, []
    for key, rng in spec.search.space.items():
        value = _current(spec, key)
        inside = min(max(value, _cast(spec, key, rng.low)), _cast(spec, key, rng.high))
        if inside != value:
            notes.append(f"baseline {key}={value} is outside the searched range [{rng.low:g}, {rng.high:g}]: "
                         f"the first trial uses {inside:g}")
        params[key] = inside
    return params, notes


def make_sampler(name: str, seed: int | None):
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"--sampler {name!r} is not known; allowed: {', '.join(SAMPLERS)}")


def make_pruner(pruner, epochs: int):
    """A pruner by name; an Optuna pruner object passes through (tests use one that always prunes)."""
    import optuna

    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        # Compare from the first epoch on, once two trials have finished: studies here are short.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner {pruner!r} is not known; allowed: {', '.join(PRUNERS)}")


def _pruner_name(pruner) -> str:
    return pruner if isinstance(pruner, str) else type(pruner).__name__


# ---------------------------------------------------------------- MLflow child runs

def _runs_of_key(c, exp_id: str, key: str):
    return c.search_runs([exp_id], filter_string=f"tags.`{TRIAL_KEY}` = '{key}'", max_results=10)


def close_child_run(c, run_id: str, state: str, error: str | None = None) -> None:
    """Tag a trial's child run with its Optuna state and give it the matching status."""
    c.set_tag(run_id, "optuna.state", state)
    if state == "PRUNED":
        # A pruned trial is no error: keep why it stopped under its own tag instead.
        run = c.get_run(run_id)
        if "mxlab.error" in run.data.tags:
            c.set_tag(run_id, "optuna.pruned", run.data.tags["mxlab.error"].split(": ", 1)[-1])
            c.delete_tag(run_id, "mxlab.error")
    if error:
        c.set_tag(run_id, "mxlab.error", error[:5000])
    c.set_terminated(run_id, RUN_STATUS[state])


def close_stale_runs(c, exp_id: str, study) -> int:
    """Child runs still RUNNING whose trial has finished (their worker died) get the trial's state; returns how many."""
    by_key = {t.user_attrs[TRIAL_KEY]: t for t in study.get_trials(deepcopy=False)
              if t.state.is_finished() and TRIAL_KEY in t.user_attrs}
    closed = 0
    runs = c.search_runs([exp_id], filter_string=f"tags.`mxlab.study` = '{study.study_name}' and "
                                                 f"attributes.status = 'RUNNING'", max_results=1000)
    for run in runs:
        trial = by_key.get(run.data.tags.get(TRIAL_KEY))
        if trial is None:
            continue
        state = trial.state.name if trial.state.name in RUN_STATUS else "FAIL"
        close_child_run(c, run.info.run_id, state,
                        error=None if state != "FAIL" else f"trial {trial.number} ended {state} while its run was "
                                                           f"still open: its worker stopped")
        closed += 1
    return closed


class NonFiniteMetric(ValueError):
    """The search metric came out NaN or infinite: the trial fails rather than steering the sampler."""


class Objective:
    """Trains one trial through :func:`run_experiment` as a child run; returns the metric's last-epoch value."""

    def __init__(self, spec: Spec, study_name: str, parent_run_id: str | None, root: Path | None = None,
                 progress: bool = True):
        self.spec, self.study_name, self.parent_run_id = spec, study_name, parent_run_id
        self.root, self.progress = root, progress
        self.config_error: Exception | None = None

    def __call__(self, trial) -> float:
        import optuna

        from mxlab.callbacks import OptunaPruner
        from mxlab.tracking import Terminated, client, experiment_id, run_experiment

        # A retried trial arrives with its original's attributes: remember which trial it repeats.
        retry_of = trial.user_attrs.get("mxlab.trial")
        key = uuid.uuid4().hex
        trial.set_user_attr(TRIAL_KEY, key)
        trial.set_user_attr("mxlab.trial", trial.number)
        trial.set_user_attr("mxlab.worker", f"{socket.gethostname()}:{os.getpid()}")
        params = suggest(trial, self.spec)
        spec = self.spec.replace(**params)
        tags = {"mxlab.study": self.study_name, "mxlab.trial": str(trial.number), TRIAL_KEY: key,
                "optuna.state": "RUNNING"}
        if retry_of is not None and retry_of != trial.number:
            tags["mxlab.retry_of"] = str(retry_of)
        _log(f"trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
        c = client(self.root)
        exp_id = experiment_id(c, spec.name, self.root)

        def close(state: str, run_id: str | None = None, error: str | None = None):
            with contextlib.suppress(Exception):   # closing must not hide the trial's own outcome
                ids = [run_id] if run_id else [r.info.run_id for r in _runs_of_key(c, exp_id, key)]
                for rid in ids:
                    close_child_run(c, rid, state, error)

        try:
            result = run_experiment(spec, callbacks=[OptunaPruner(trial, spec.search.metric)], tags=tags,
                                    parent_run_id=self.parent_run_id, run_name=f"trial-{trial.number}",
                                    progress=self.progress, root=self.root)
        except optuna.TrialPruned:
            close("PRUNED")
            raise
        except (KeyboardInterrupt, Terminated) as exc:
            # The run is already KILLED; Optuna fails the trial only for Exception and KeyboardInterrupt.
            with contextlib.suppress(Exception):
                for run in _runs_of_key(c, exp_id, key):
                    c.set_tag(run.info.run_id, "optuna.state", "FAIL")
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt(str(exc)) from exc
        except Exception as exc:
            close("FAIL")
            if isinstance(exc, KeyError) and str(exc).strip("'\"").startswith("search.metric"):
                # The metric does not exist for this experiment: every trial would fail the same way.
                self.config_error = exc
                trial.study.stop()
            raise
        value = result.history[-1].get(spec.search.metric) if result.history else None
        if value is None or not math.isfinite(value):
            close("FAIL", result.run_id, f"search.metric {spec.search.metric} is {value}")
            raise NonFiniteMetric(f"trial {trial.number}: {spec.search.metric} is {value}")
        trial.set_user_attr("mlflow.run_id", result.run_id)
        close("COMPLETE", result.run_id)
        return float(value)


# ---------------------------------------------------------------- studies

@dataclasses.dataclass
class TuneOptions:
    trials: int = 20
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: Any = "median"
    workers: int = 1
    seed: int | None = None
    heartbeat: int = HEARTBEAT_SECONDS
    progress: bool = True

    def check(self) -> None:
        if self.trials < 1:
            raise ValueError(f"--trials {self.trials}: allowed: an integer >= 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"--timeout {self.timeout}: allowed: a number of seconds > 0")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers}: allowed: an integer >= 1")
        if self.heartbeat < 1:
            raise ValueError(f"--heartbeat {self.heartbeat}: allowed: an integer number of seconds >= 1")
        if self.study is not None and not STUDY_NAME_RE.match(self.study):
            raise ValueError(f"--study {self.study!r}: allowed: letters, digits, '_', '-' and '.'")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r} is not known; allowed: {', '.join(SAMPLERS)}")
        if isinstance(self.pruner, str) and self.pruner not in PRUNERS:
            raise ValueError(f"--pruner {self.pruner!r} is not known; allowed: {', '.join(PRUNERS)}")


def load_or_create_study(spec: Spec, study_name: str, storage, sampler=None, pruner=None, overrides=()):
    """The study, created on first use with the spec's own values enqueued as its first trial.

    A resumed study must optimise the same metric in the same direction, or its values would not compare.
    """
    import optuna

    with _quiet_optuna():
        try:
            storage.get_study_id_from_name(study_name)
            existed = True
        except KeyError:
            existed = False
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=spec.search.direction, load_if_exists=True)
    if study.direction.name.lower() != spec.search.direction:
        raise ValueError(f"study {study_name!r} {study.direction.name.lower()}s, but search.direction is "
                         f"{spec.search.direction}; allowed: the study's direction, or another --study name")
    metric = study.user_attrs.get("metric")
    if metric and metric != spec.search.metric:
        raise ValueError(f"study {study_name!r} optimises {metric}, but search.metric is {spec.search.metric}; "
                         f"allowed: search.metric={metric}, or another --study name")
    recorded = study.user_attrs.get("overrides")
    if existed and recorded is not None and list(recorded) != list(overrides):
        _log(f"note: study {study_name!r} was started with overrides {' '.join(recorded) or '(none)'}; this "
             f"invocation uses {' '.join(overrides) or '(none)'}: its trials may not compare with the earlier ones")
    if not existed or not metric:
        study.set_user_attr("experiment", spec.name)
        study.set_user_attr("metric", spec.search.metric)
        study.set_user_attr("overrides", list(overrides))
        params, notes = baseline_params(spec)
        for note in notes:
            _log(note)
        study.enqueue_trial(params, user_attrs={"mxlab.baseline": True}, skip_if_exists=True)
    return study


def _sampler_seed(seed: int | None, study, worker: int) -> int | None:
    """Distinct per worker and per resume, so neither repeats another's draws, yet reproducible from ``--seed``."""
    if seed is None:
        return None
    return seed + 1000 * worker + len(study.get_trials(deepcopy=False))


def optimize(spec: Spec, study, *, trials: int, timeout: float | None, parent_run_id: str | None,
             root: Path | None = None, progress: bool = True) -> None:
    """Run ``trials`` trials in this process; failed trials are recorded and the study goes on."""
    from mxlab.tracking import sigterm_as_exception

    objective = Objective(spec, study.study_name, parent_run_id, root, progress)
    with sigterm_as_exception(), _quiet_optuna():
        study.optimize(objective, n_trials=trials, timeout=timeout, catch=(Exception,), gc_after_trial=True)
    if objective.config_error is not None:
        raise objective.config_error


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
        "parent_run_id": parent_run_id,
    }


def _write_plots(study, folder: Path) -> dict[str, str]:
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
            with _quiet_optuna():
                fig = plot(study)
            fig.write_html(str(folder / f"{name}.html"), include_plotlyjs=True, full_html=True)
        except Exception as exc:   # a plot is a report, not the study: never fail the parent for one
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return skipped


def _log_parent_results(c, run_id: str, study, result: dict) -> None:
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
        skipped = _write_plots(study, folder / "plots")
        if skipped:
            c.set_tag(run_id, "mxlab.plots_skipped", json.dumps(skipped)[:5000])
        (folder / "study.json").write_text(json.dumps({**result, "plots_skipped": skipped}, indent=2))
        with contextlib.suppress(Exception):   # pandas is optional for Optuna; the table is a convenience
            study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        c.log_artifacts(run_id, str(folder))


def tune(name: str, overrides: Sequence[str] = (), options: TuneOptions | None = None,
         root: Path | None = None) -> dict:
    """Run a study on experiment ``name``; returns :func:`summary` (what ``--json`` prints)."""
    from mxlab.tracking import client, experiment_id, log_params, run_lifecycle, set_tags

    options = options or TuneOptions()
    options.check()
    spec, notes = tuning_spec(name, overrides, root)   # every spec and space error comes before any trial or run
    for note in notes:
        _log(note)
    url = storage_url(options.storage, root)
    if is_sqlite(url) and options.workers > 1:
        raise ValueError(f"--workers {options.workers} needs a database server: the study storage is sqlite "
                         f"({redact(url)}), which is for one worker. Allowed: --workers 1, or a PostgreSQL storage "
                         f"(--storage postgresql://user:password@host:5432/optuna or MXLAB_OPTUNA_STORAGE); see "
                         f"'Scaling out' in the README")
    study_name = options.study or spec.name
    if options.workers > 1 and not os.environ.get("MLFLOW_TRACKING_URI"):
        _log(f"note: {options.workers} workers write to the workspace's sqlite MLflow store; for many workers or "
             f"machines set MLFLOW_TRACKING_URI to a tracking server")
    storage = open_storage(url, experiment=spec.name, heartbeat=options.heartbeat, root=root)
    pruner = make_pruner(options.pruner, spec.train.epochs)
    study = load_or_create_study(spec, study_name, storage, pruner=pruner, overrides=overrides)
    c = client(root)   # the MLflow schema exists before any worker starts
    exp_id = experiment_id(c, spec.name, root)
    parent = c.create_run(exp_id, run_name=f"study-{study_name}", tags={
        "mxlab.study": study_name, "mxlab.study_storage": redact(url), "mxlab.sampler": options.sampler,
        "mxlab.pruner": _pruner_name(options.pruner), "mxlab.role": "study", "mxlab.experiment": spec.name,
        **({"mxlab.note": " ".join(notes)} if notes else {})})
    parent_id = parent.info.run_id
    with run_lifecycle(c, parent_id):   # entered at once: nothing may leave the parent run RUNNING
        _log(f"study {study_name!r} on {redact(url)}: {len(study.get_trials(deepcopy=False))} trial(s) so far; "
             f"{options.trials} more with {options.workers} worker(s); MLflow parent run {parent_id}")
        log_params(c, parent_id, spec)
        set_tags(c, parent_id, {"mxlab.trials": options.trials, "mxlab.workers": options.workers,
                                "mxlab.seed": options.seed, "mxlab.overrides": " ".join(overrides)})
        try:
            if options.workers == 1:
                study.sampler = make_sampler(options.sampler, _sampler_seed(options.seed, study, 0))
                optimize(spec, study, trials=options.trials, timeout=options.timeout, parent_run_id=parent_id,
                         root=root, progress=options.progress)
            else:
                lost = _run_workers(name, overrides, options, study_name, url, parent_id, root)
                orphans = [t.number for t in study.get_trials(deepcopy=False)
                           if t.state.name == "RUNNING" and t.user_attrs.get("mxlab.worker") in lost]
                if orphans:
                    # A worker that died mid-trial leaves it RUNNING until its heartbeat is stale: wait that out
                    # and fail it here, so that nothing stays RUNNING; its retry waits for the next worker.
                    _log(f"trial(s) {orphans} lost their worker; failing them after the {2 * options.heartbeat}s "
                         f"grace period")
                    time.sleep(2 * options.heartbeat + 1)
                    with _quiet_optuna():
                        from optuna.storages import fail_stale_trials

                        fail_stale_trials(study)
        finally:   # even when every worker failed: child runs whose trial ended must not stay RUNNING
            closed = close_stale_runs(c, exp_id, study)
            if closed:
                _log(f"closed {closed} child run(s) whose worker had died")
        result = summary(study, url, parent_id)
        _log_parent_results(c, parent_id, study, result)
    return result


def _run_workers(name, overrides, options: TuneOptions, study_name: str, url: str, parent_id: str,
                 root: Path | None) -> set[str]:
    """K processes of ``mxlab tune --worker``, sharing the trials; returns ``host:pid`` of those that died."""
    share = [options.trials // options.workers + (i < options.trials % options.workers)
             for i in range(options.workers)]
    env = dict(os.environ)
    env["MXLAB_OPTUNA_STORAGE"] = url     # the password travels in the environment, not on the command line
    if root:
        env["MXLAB_ROOT"] = str(root)
    # Workers share the cores: one worker's OpenMP pool should not take them all.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // options.workers)))
    procs = []
    for i, n in enumerate(share):
        if n == 0:
            continue
        cmd = [sys.executable, "-m", "mxlab.cli", "tune", name, *overrides, "--worker", "--worker-index", str(i),
               "--parent-run-id", parent_id, "--study", study_name, "--trials", str(n),
               "--sampler", options.sampler, "--pruner", _pruner_name(options.pruner),
               "--heartbeat", str(options.heartbeat)]
        if options.timeout:
            cmd += ["--timeout", str(options.timeout)]
        if options.seed is not None:
            cmd += ["--seed", str(options.seed)]
        # Workers print nothing for a program to read: their stdout joins stderr, keeping --json stdout clean.
        procs.append(subprocess.Popen(cmd, env=env, stdout=sys.stderr.fileno()))
    _log(f"started workers {', '.join(str(p.pid) for p in procs)}")
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    lost = {f"{socket.gethostname()}:{p.pid}" for p, code in zip(procs, codes) if code != 0}
    for p, code in zip(procs, codes):
        if code != 0:
            _log(f"worker {p.pid} ended with {'signal ' + str(-code) if code < 0 else 'exit code ' + str(code)}")
    if len(lost) == len(procs):
        raise RuntimeError(f"all {len(lost)} workers failed; see their messages above")
    return lost


def worker(name: str, overrides: Sequence[str], options: TuneOptions, parent_run_id: str, index: int,
           root: Path | None = None) -> None:
    """One worker of ``tune --workers K``: the study exists already; run this worker's share of trials."""
    import optuna

    options.check()
    spec, _ = tuning_spec(name, overrides, root)
    url = storage_url(options.storage, root)
    storage = open_storage(url, experiment=spec.name, heartbeat=options.heartbeat, root=root)
    with _quiet_optuna():
        study = optuna.load_study(study_name=options.study or spec.name, storage=storage,
                                  pruner=make_pruner(options.pruner, spec.train.epochs))
    study.sampler = make_sampler(options.sampler, _sampler_seed(options.seed, study, index))
    optimize(spec, study, trials=options.trials, timeout=options.timeout, parent_run_id=parent_run_id,
             root=root, progress=options.progress)


# ---------------------------------------------------------------- the best trial

def load_study(name: str, study: str | None = None, storage: str | None = None, root: Path | None = None):
    import optuna

    url = storage_url(storage, root)
    study_name = study or name
    store = open_storage(url, heartbeat=None, root=root)
    try:
        store.get_study_id_from_name(study_name)
    except KeyError:
        known = ", ".join(s.study_name for s in optuna.get_all_study_summaries(store)) or "(none)"
        raise ValueError(f"no study {study_name!r} in {redact(url)}; studies there: {known}. "
                         f"Run: mxlab tune {name}") from None
    with _quiet_optuna():
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
              root: Path | None = None) -> tuple[Spec, dict]:
    """The experiment's spec with the best trial's params on top (after ``overrides``), and the tags linking them."""
    info = best(name, study, storage, root)
    spec = specs.load_spec(name, overrides, root)
    spec = spec.replace(**info["params"])
    return spec, {"mxlab.study": info["study"], "mxlab.trial": str(info["trial"]),
                  "mxlab.study_storage": info["storage"]}


def dashboard(storage: str | None = None, port: int = 8080, root: Path | None = None) -> None:
    """optuna-dashboard on the study storage, on 127.0.0.1 only; the URL stays out of the process list."""
    from optuna_dashboard import run_server

    url = storage_url(storage, root)
    print(f"mxlab dashboard: Optuna dashboard on http://127.0.0.1:{port} (storage {redact(url)})", file=sys.stderr)
    run_server(open_storage(url, heartbeat=None, root=root), host="127.0.0.1", port=port)
