"""A study over any experiment: options, sampler and pruner, the study itself, and one ``tune`` invocation.

A study is named after the experiment (``--study`` overrides it) and lives in the storage of
:mod:`mxlab.tuning.storage`; running ``tune`` again resumes it and its trials add up. Each trial trains through
:func:`mxlab.runner.run`, exactly like ``mxlab run``, as a child of one MLflow parent run per invocation; the
pruner is one more callback. Several workers need a database server (PostgreSQL); heartbeats let the others
fail and retry the trial of a worker that died.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

from mxlab import heap, naming
from mxlab.tuning.space import baseline_params, tuning_spec
from mxlab.tuning.storage import HEARTBEAT_SECONDS, is_sqlite, open_storage, quiet_optuna, redact, storage_url
from mxlab.tuning.trials import Objective, StaleTrialHandler, close_stale_runs, log, recover_interrupted

STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _tpe(seed):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(seed):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _median(epochs):
    import optuna

    # Compare from the first epoch on, once two trials have finished: studies here are short.
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def _hyperband(epochs):
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)


def _no_pruning(epochs):
    import optuna

    return optuna.pruners.NopPruner()


# The names the command line offers, and what each makes: the one list of them.
SAMPLERS = {"tpe": _tpe, "random": _random}
PRUNERS = {"median": _median, "hyperband": _hyperband, "none": _no_pruning}


@dataclasses.dataclass
class TuneOptions:
    trials: int = 20
    timeout: float | None = None
    study: str | None = None
    storage: str | None = None
    sampler: str = "tpe"
    pruner: Any = "median"      # a name from PRUNERS, or an Optuna pruner object (picklable, for workers)
    workers: int = 1
    seed: int | None = None
    heartbeat: int = HEARTBEAT_SECONDS
    progress: bool = True
    preset: str | None = None

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
        if self.seed is not None and not 0 <= self.seed < 2**32:   # what the samplers' numpy generators take
            raise ValueError(f"--seed {self.seed}: allowed: an integer in [0, 2^32)")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r} is not known; allowed: {', '.join(SAMPLERS)}")
        if isinstance(self.pruner, str) and self.pruner not in PRUNERS:
            raise ValueError(f"--pruner {self.pruner!r} is not known; allowed: {', '.join(PRUNERS)}")


def make_sampler(name: str, seed: int | None):
    return SAMPLERS[name](seed)


def make_pruner(pruner, epochs: int):
    """A pruner by name; an Optuna pruner object passes through (tests use one that always prunes)."""
    return PRUNERS[pruner](epochs) if isinstance(pruner, str) else pruner


def pruner_name(pruner) -> str:
    return pruner if isinstance(pruner, str) else type(pruner).__name__


def load_or_create_study(spec, study_name: str, storage, sampler=None, pruner=None, overrides=()):
    """The study, created on first use with the spec's own values enqueued as its first trial.

    A resumed study must optimise the same metric in the same direction, or its values would not compare.
    """
    import optuna

    with quiet_optuna():
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
    if study.metric_names != [spec.search.metric]:   # the dashboard then says val/acc, not "Objective 0"
        with quiet_optuna():
            study.set_metric_names([spec.search.metric])
    recorded = study.user_attrs.get("overrides")
    if existed and recorded is not None and list(recorded) != list(overrides):
        log(f"note: study {study_name!r} was started with overrides {' '.join(recorded) or '(none)'}; this "
            f"invocation uses {' '.join(overrides) or '(none)'}: its trials may not compare with the earlier ones")
    if not existed or not metric:
        study.set_user_attr("experiment", spec.name)
        study.set_user_attr("metric", spec.search.metric)
        study.set_user_attr("overrides", list(overrides))
        params, notes = baseline_params(spec)
        for note in notes:
            log(note)
        study.enqueue_trial(params, user_attrs={"mxlab.baseline": True}, skip_if_exists=True)
    return study


def sampler_seed(seed: int | None, study, worker: int) -> int | None:
    """Distinct per worker and per resume, so neither repeats another's draws, yet reproducible from ``--seed``."""
    if seed is None:
        return None
    return seed + 1000 * worker + len(study.get_trials(deepcopy=False))


def open_study_storage(url: str, experiment: str, options: TuneOptions, root: Path | None):
    return open_storage(url, heartbeat=options.heartbeat, on_stale=StaleTrialHandler(experiment, root))


def optimize(spec, study, *, trials: int, timeout: float | None, parent_run_id: str | None,
             root: Path | None = None, progress: bool = True) -> None:
    """Run ``trials`` trials in this process; failed trials are recorded and the study goes on."""
    from mxlab.interrupts import stops_as_exceptions

    objective = Objective(spec, study.study_name, parent_run_id, root, progress)
    with stops_as_exceptions(), quiet_optuna(), heap.frozen():
        study.optimize(objective, n_trials=trials, timeout=timeout, catch=(Exception,), callbacks=[heap.collect_trial])
    if objective.config_error is not None:
        raise objective.config_error


def tune(name: str, overrides: Sequence[str] = (), options: TuneOptions | None = None,
         root: Path | None = None) -> dict:
    """Run a study on experiment ``name``; returns :func:`mxlab.tuning.results.summary` (what ``--json`` prints)."""
    from mxlab.tracking import log_params, run_lifecycle, set_tags, start_run
    from mxlab.tuning.results import log_parent_results, summary
    from mxlab.tuning.workers import run_workers

    options = options or TuneOptions()
    options.check()
    # Every spec and space error comes before any trial or run.
    spec, notes = tuning_spec(name, overrides, root, preset=options.preset)
    for note in notes:
        log(note)
    url = storage_url(options.storage, root)
    if is_sqlite(url) and options.workers > 1:
        raise ValueError(f"--workers {options.workers} needs a database server: the study storage is sqlite "
                         f"({redact(url)}), which is for one worker. Allowed: --workers 1, or a PostgreSQL storage "
                         f"(--storage postgresql://user:password@host:5432/optuna or MXLAB_OPTUNA_STORAGE); see "
                         f"'Scaling out' in the README")
    study_name = options.study or spec.name
    if options.workers > 1 and not os.environ.get("MLFLOW_TRACKING_URI"):
        log(f"note: {options.workers} workers write to the workspace's sqlite MLflow store; for many workers or "
            f"machines set MLFLOW_TRACKING_URI to a tracking server")
    storage = open_study_storage(url, spec.name, options, root)
    pruner = make_pruner(options.pruner, spec.train.epochs)
    study = load_or_create_study(spec, study_name, storage, pruner=pruner, overrides=overrides)
    # The MLflow schema exists before any worker starts: the parent run's client makes it.
    c, parent = start_run(spec.name, run_name=f"study-{study_name}", root=root, description=spec.description, tags={
        "mxlab.study": study_name, "mxlab.study_storage": redact(url), "mxlab.sampler": options.sampler,
        "mxlab.pruner": pruner_name(options.pruner), "mxlab.role": "study", "mxlab.experiment": spec.name,
        "mlflow.note.content": naming.command_line(),
        **({"mxlab.note": " ".join(notes)} if notes else {})})
    exp_id, parent_id = parent.info.experiment_id, parent.info.run_id
    with run_lifecycle(c, parent_id):   # entered at once: nothing may leave the parent run RUNNING
        log(f"study {study_name!r} on {redact(url)}: {len(study.get_trials(deepcopy=False))} trial(s) so far; "
            f"{options.trials} more with {options.workers} worker(s); MLflow parent run {parent_id}")
        log_params(c, parent_id, spec)
        set_tags(c, parent_id, {"mxlab.trials": options.trials, "mxlab.workers": options.workers,
                                "mxlab.seed": options.seed, "mxlab.overrides": " ".join(overrides)})
        try:
            recover_interrupted(study, c, exp_id)
            if options.workers == 1:
                study.sampler = make_sampler(options.sampler, sampler_seed(options.seed, study, 0))
                optimize(spec, study, trials=options.trials, timeout=options.timeout, parent_run_id=parent_id,
                         root=root, progress=options.progress)
            else:
                lost = run_workers(name, overrides, dataclasses.replace(options, storage=url, study=study_name),
                                   parent_id, root)
                orphans = [t.number for t in study.get_trials(deepcopy=False)
                           if t.state.name == "RUNNING" and t.user_attrs.get("mxlab.worker") in lost]
                if orphans:
                    # A worker that died mid-trial leaves it RUNNING until its heartbeat is stale: wait that out
                    # and fail it here, so that nothing stays RUNNING; its retry waits for the next worker.
                    log(f"trial(s) {orphans} lost their worker; failing them after the {2 * options.heartbeat}s "
                        f"grace period")
                    time.sleep(2 * options.heartbeat + 1)
                    with quiet_optuna():
                        from optuna.storages import fail_stale_trials

                        fail_stale_trials(study)
        finally:   # even when every worker failed: child runs whose trial ended must not stay RUNNING
            closed = close_stale_runs(c, exp_id, study)
            if closed:
                log(f"closed {closed} child run(s) whose worker had died")
        result = summary(study, url, parent_id)
        log_parent_results(c, parent_id, study, result)
    return result
