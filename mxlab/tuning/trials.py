"""One trial: the objective that trains it as an MLflow child run, the pruner callback, and closing child runs.

States and MLflow run statuses match one to one: COMPLETE -> FINISHED, PRUNED -> KILLED (MLflow has no
"pruned"; the trial was stopped on purpose), FAIL -> FAILED, except that a trial interrupted by Ctrl-C or
SIGTERM stays KILLED like any interrupted run. Each child run carries ``optuna.state``.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import uuid
from pathlib import Path

from mxlab.callbacks import Callback
from mxlab.tuning.space import suggest

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
TRIAL_KEY = "mxlab.trial_key"   # links a trial to its MLflow child run, even across retries and storages
MAX_RETRY = 2                   # a trial whose worker died is retried this many times, then left FAIL
INTERRUPTED = "mxlab.interrupted"   # a trial stopped by a signal or a dead process, not by its own failure
RESUME_RUN = "mxlab.resume_run"     # a retry continues this MLflow run from its last checkpoint


def log(message: str) -> None:
    print(f"mxlab tune: {message}", file=sys.stderr, flush=True)


class OptunaPruner(Callback):
    """Reports the study's metric each epoch and stops a trial the pruner gives up on."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, state, metrics):
        import optuna

        if self.metric not in metrics:
            raise KeyError(f"search.metric {self.metric!r} is not among this run's metrics: "
                           f"{', '.join(sorted(metrics))}")
        self.trial.report(metrics[self.metric], state.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {state.epoch} with {self.metric}={metrics[self.metric]:.4g}")


def runs_of_key(c, exp_id: str, key: str):
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


class StaleTrialHandler:
    """Called by Optuna for a trial whose worker stopped beating: retry it and close its MLflow child run."""

    def __init__(self, experiment: str | None, root: Path | None = None):
        self.experiment, self.root = experiment, root

    def __call__(self, study, trial) -> None:
        import optuna

        from mxlab.tuning.storage import quiet_optuna

        with quiet_optuna():
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
        log(f"trial {trial.number} of study {study.study_name!r} lost its worker (no heartbeat): failed it "
            f"and queued a retry with the same parameters")
        if self.experiment and trial.user_attrs.get(TRIAL_KEY):
            with contextlib.suppress(Exception):   # the study must go on even if MLflow is unreachable
                from mxlab.tracking import client, experiment_id

                c = client(self.root)
                for run in runs_of_key(c, experiment_id(c, self.experiment, self.root), trial.user_attrs[TRIAL_KEY]):
                    if run.info.status == "RUNNING":
                        close_child_run(c, run.info.run_id, "FAIL",
                                        error=f"worker {trial.user_attrs.get('mxlab.worker', '?')} stopped "
                                              f"beating; trial {trial.number} failed and retried")


def _worker_gone(trial) -> bool:
    """The trial's worker ran on this host and its process no longer exists."""
    host, _, pid = str(trial.user_attrs.get("mxlab.worker", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()   # this very process starts anew: its old trial cannot be running


def recover_interrupted(study, c, exp_id: str) -> list[int]:
    """Before new trials: fail the trials this host's dead workers left RUNNING, and queue one retry of every
    interrupted trial, which continues its MLflow run from the last checkpoint. Returns the retried numbers."""
    from optuna.trial import TrialState

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _worker_gone(trial):
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    retried = set(study.user_attrs.get("mxlab.retried", []))
    queued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if not trial.user_attrs.get(INTERRUPTED) or trial.number in retried:
            continue
        runs = runs_of_key(c, exp_id, trial.user_attrs[TRIAL_KEY]) if TRIAL_KEY in trial.user_attrs else []
        attrs = {"mxlab.trial": trial.number}
        if runs:
            attrs[RESUME_RUN] = runs[0].info.run_id
        study.enqueue_trial(trial.params, user_attrs=attrs)
        queued.append(trial.number)
    if queued:
        study.set_user_attr("mxlab.retried", sorted(retried | set(queued)))
        log(f"trial(s) {queued} were interrupted: retrying them first, each continuing its run from its last "
            f"checkpoint")
    return queued


class NonFiniteMetric(ValueError):
    """The search metric came out NaN or infinite: the trial fails rather than steering the sampler."""


class Objective:
    """Trains one trial through :func:`mxlab.runner.run` as a child run; returns the metric's last-epoch value."""

    def __init__(self, spec, study_name: str, parent_run_id: str | None, root: Path | None = None,
                 progress: bool = True):
        self.spec, self.study_name, self.parent_run_id = spec, study_name, parent_run_id
        self.root, self.progress = root, progress
        self.config_error: Exception | None = None

    def __call__(self, trial) -> float:
        try:
            return self._trial(trial)
        except KeyboardInterrupt:
            # Ctrl-C, SIGTERM or SIGHUP, wherever it landed, even before the trial's run began: Optuna fails the
            # trial, and the next `tune` retries it (continuing its run from the last checkpoint, if it has one).
            from mxlab.interrupts import stops_deferred

            with contextlib.suppress(Exception), stops_deferred():   # a second stop must not cut the mark
                trial.set_user_attr(INTERRUPTED, True)
            raise

    def _trial(self, trial) -> float:
        import optuna

        from mxlab.runner import run
        from mxlab.tracking import client, experiment_id, has_artifact, set_tags

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
        log(f"trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
        c = client(self.root)

        def runs_of_this_trial():   # looked up only when the trial did not say which run it made
            return runs_of_key(c, experiment_id(c, spec.name, self.root), key)

        def close(state: str, run_id: str | None = None, error: str | None = None):
            with contextlib.suppress(Exception):   # closing must not hide the trial's own outcome
                ids = [run_id] if run_id else [r.info.run_id for r in runs_of_this_trial()]
                for rid in ids:
                    trial.set_user_attr("mlflow.run_id", rid)   # every trial links to its run, pruned or failed too
                    close_child_run(c, rid, state, error)

        pruner = OptunaPruner(trial, spec.search.metric)
        try:
            earlier = trial.user_attrs.get(RESUME_RUN)
            if earlier and not has_artifact(c, earlier, "spec.yaml"):
                # Its worker stopped before training began: there is nothing to continue, so the retry trains a
                # run of its own (tagged mxlab.retry_of); the earlier run stays KILLED.
                log(f"trial {trial.number}: run {earlier} of trial {retry_of} stopped before it trained; starting "
                    f"afresh")
                earlier = None
            if earlier:   # an interrupted trial's retry goes on in the same run, under this trial's number
                set_tags(c, earlier, {**tags, "mlflow.runName": f"trial-{trial.number}",
                                      "mlflow.parentRunId": self.parent_run_id or ""})
                run_id, value = self._continue(earlier, trial, retry_of, spec, pruner, c)
            else:
                result = run(spec, callbacks=[pruner], tags=tags, parent_run_id=self.parent_run_id,
                             run_name=f"trial-{trial.number}", progress=self.progress, root=self.root)
                run_id, value = result.run_id, last_value(result, spec.search.metric)
            if value is None or not math.isfinite(value):
                close("FAIL", run_id, f"search.metric {spec.search.metric} is {value}")
                raise NonFiniteMetric(f"trial {trial.number}: {spec.search.metric} is {value}")
            trial.set_user_attr("mlflow.run_id", run_id)
            close("COMPLETE", run_id)
            return float(value)
        except optuna.TrialPruned:
            close("PRUNED")
            raise
        except NonFiniteMetric:
            raise
        except KeyboardInterrupt:
            # Even after the run closed: the run is already KILLED (or FINISHED); its trial's state says FAIL.
            with contextlib.suppress(Exception):
                for r in runs_of_this_trial():
                    c.set_tag(r.info.run_id, "optuna.state", "FAIL")
            raise
        except Exception as exc:
            close("FAIL")
            if isinstance(exc, KeyError) and str(exc).strip("'\"").startswith("search.metric"):
                # The metric does not exist for this experiment: every trial would fail the same way.
                self.config_error = exc
                trial.study.stop()
            raise

    def _continue(self, run_id: str, trial, retry_of, spec, pruner, c) -> tuple[str, float | None]:
        """The retry of an interrupted trial: resume its run, or take its result if it had FINISHED (the stop
        came after the run closed, before the trial was told)."""
        from mxlab.runner import resume

        earlier = c.get_run(run_id)
        if earlier.info.status == "FINISHED":
            log(f"trial {trial.number}: run {run_id} of trial {retry_of} had finished; taking its result")
            return run_id, earlier.data.metrics.get(spec.search.metric)
        result = resume(spec.name, run_id, callbacks=[pruner], progress=self.progress, root=self.root)
        return result.run_id, last_value(result, spec.search.metric)


def last_value(result, metric: str) -> float | None:
    """The metric at the run's last epoch."""
    return result.history[-1].get(metric) if result.history else None
