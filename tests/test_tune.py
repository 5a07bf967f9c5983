"""Optuna studies on one machine: tiny studies of real experiments, checked in Optuna and in MLflow."""
from __future__ import annotations

import gc
import json
import weakref

import optuna
import pytest

from mxlab import cli, heap
from mxlab.tuning import space, storage
from mxlab.tuning import study as studies
from mxlab.spec import SpecError, load_spec
from mxlab.tracking import client

pytestmark = pytest.mark.slow   # studies with tracked trials: `make test`, not test-fast

QUICK = ["train.epochs=2", "data.limit=256", "data.batch_size=64"]


def _runs(exp_name: str):
    c = client()
    exp = c.get_experiment_by_name(exp_name)
    runs = c.search_runs([exp.experiment_id], max_results=500)
    parents = [r for r in runs if r.data.tags.get("mxlab.role") == "study"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_each_trial_is_collected_and_what_outlives_it_is_frozen_out_of_the_next_collections():
    class Net:   # a Gluon network's blocks refer to each other: freed by a collection, not by reference counts
        pass

    trials, kept = [], []

    def objective(trial):
        if trial.number:   # the previous trial's network is gone before this one starts
            assert trials[-1]() is None
            assert not any(o is kept[-1] for o in gc.get_objects())   # what it left alive is frozen
        net = Net()
        net.me = net
        trials.append(weakref.ref(net))
        kept.append([trial.number])   # outlives the trial, like a cache a trial fills
        return 0.0

    with heap.frozen():
        optuna.create_study().optimize(objective, n_trials=3, callbacks=[heap.collect_trial])
    assert any(o is kept[-1] for o in gc.get_objects())   # unfrozen when the study ends


def test_a_stop_before_the_trial_s_run_begins_still_queues_its_retry(workspace, monkeypatch):
    from mxlab import tracking
    from mxlab.tuning import trials

    spec, _ = space.tuning_spec("linreg", ["train.epochs=1"], workspace)
    study = optuna.create_study(direction=spec.search.direction)

    def stopped(*args, **kwargs):   # SIGTERM as the trial opens its store, before its run exists
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(tracking, "client", stopped)
        study.optimize(trials.Objective(spec, "stopped", None, workspace, progress=False), n_trials=1)
    assert study.trials[0].state.name == "FAIL" and study.trials[0].user_attrs[trials.INTERRUPTED]
    c = client(workspace)
    assert trials.recover_interrupted(study, c, tracking.experiment_id(c, "linreg", workspace)) == [0]
    retry = study.trials[-1]
    assert retry.state.name == "WAITING" and retry.system_attrs["fixed_params"] == study.trials[0].params


def test_space_errors_come_before_any_trial_or_run(workspace, capsys):
    cases = {
        "search.space.train.nope.low=0.1": "train.nope' cannot be searched",
        # LeNet has no dropout: its searchable keys hold none, so a dropout range is refused by name.
        "search.space.model.dropout.low=0.1": "model.dropout' cannot be searched",
    }
    for override, message in cases.items():
        leaf = override.split("=")[0].rsplit(".", 1)[0]
        with pytest.raises(SpecError, match=message):
            studies.tune("lenet", [override, f"{leaf}.high=0.5", *QUICK])
    with pytest.raises(SpecError, match="search.space.train.lr.*low <= high"):
        studies.tune("lenet", ["search.space.train.lr.low=0.5", "search.space.train.lr.high=0.1", *QUICK])
    with pytest.raises(SpecError, match="low > 0 when log is true"):
        studies.tune("lenet", ["search.space.train.wd.low=0", "search.space.train.wd.high=0.1",
                            "search.space.train.wd.log=true", *QUICK])
    # Ends that the spec itself refuses are caught before the study, not by a failing trial.
    with pytest.raises(SpecError, match=r"search.space.train.momentum: high=1.5 .*\[0, 1\)"):
        studies.tune("lenet", ["train.optimizer=momentum", "search.space.train.momentum.low=0.5",
                            "search.space.train.momentum.high=1.5", *QUICK])
    # Momentum is searchable only where the optimizer uses it.
    with pytest.raises(SpecError, match="'train.momentum' cannot be searched"):
        studies.tune("lenet", ["search.space.train.momentum.low=0.5", "search.space.train.momentum.high=0.9", *QUICK])
    # Several workers on sqlite are refused with what to do instead.
    with pytest.raises(ValueError, match="--workers 2 needs a database server.*postgresql://"):
        studies.tune("lenet", QUICK, studies.TuneOptions(workers=2))
    with pytest.raises(ValueError, match=r"--seed 4294967296: allowed: an integer in \[0, 2\^32\)"):
        studies.tune("lenet", QUICK, studies.TuneOptions(seed=2**32))
    # Through the command line: a clear message and exit code 2.
    assert cli.main(["tune", "lenet", "search.space.train.lr.low=1", "search.space.train.lr.high=0.1"]) == 2
    assert "low <= high" in capsys.readouterr().err
    assert not (workspace / "mlruns" / "optuna.db").exists()
    assert not (workspace / "mlruns" / "mlflow.db").exists()


def test_default_space_and_validation_hold_out(workspace):
    spec, notes = space.tuning_spec("lenet", QUICK)
    assert set(spec.search.space) == {"train.lr", "train.wd"}
    assert spec.search.space["train.lr"].log and spec.search.space["train.wd"].log
    assert spec.search.metric == "val/acc" and spec.data.val_fraction == space.TUNE_VAL_FRACTION
    assert "val_fraction" in notes[0]
    own, notes = space.tuning_spec("lenet", [*QUICK, "data.val_fraction=0.2"])
    assert own.data.val_fraction == 0.2 and not notes
    params, moved = space.baseline_params(spec)
    # The spec's own lr; wd 0 cannot sit on a log scale and moves to the low end.
    assert params == {"train.lr": 0.9, "train.wd": spec.search.space["train.wd"].low}
    assert "train.wd=0.0" in moved[0]


def test_each_dropout_rate_is_searched_on_its_own(workspace):
    spec, _ = space.tuning_spec("dropout", QUICK)   # the book's MLP: dropout1=0.2, then dropout2=0.5
    assert set(spec.search.space) == {"train.lr", "train.wd", "model.dropout1", "model.dropout2"}
    trial = optuna.trial.FixedTrial({"train.lr": 0.1, "train.wd": 1e-4, "model.dropout1": 0.1, "model.dropout2": 0.7})
    trained = spec.replace(**space.suggest(trial, spec))
    assert (trained.model.options["dropout1"], trained.model.options["dropout2"]) == (0.1, 0.7)
    assert space.baseline_params(spec)[0]["model.dropout1"] == 0.2
    assert space.baseline_params(spec)[0]["model.dropout2"] == 0.5
    # One hidden layer has no second dropout: a range for dropout2 there is refused before the study starts.
    with pytest.raises(SpecError, match="search.space.model.dropout2: high=0.5 does not make a valid experiment"):
        space.tuning_spec("mlp", [*QUICK, "search.space.model.dropout2.low=0", "search.space.model.dropout2.high=0.5"])


def test_pruned_trials_leave_pruned_child_runs(workspace):
    result = studies.tune("lenet", QUICK, studies.TuneOptions(trials=2, pruner=AlwaysPrune(), seed=0, progress=False))
    assert result["states"]["PRUNED"] == 2 and result["n_trials"] == 2
    assert result["best_value"] is None and result["best_params"] == {}
    c, parents, children = _runs("lenet")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert parents[0].info.run_id == result["parent_run_id"]
    assert parents[0].data.tags["mxlab.pruner"] == "AlwaysPrune"
    assert parents[0].data.metrics["trials.pruned"] == 2
    assert len(children) == 2
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
        assert run.data.tags["optuna.state"] == "PRUNED"
        assert run.info.status == "KILLED"
        assert "mxlab.error" not in run.data.tags and "pruned at epoch 1" in run.data.tags["optuna.pruned"]
        # Pruned after the first of two epochs: one step of metrics, logged before the pruner stopped it.
        assert [m.step for m in c.get_metric_history(run.info.run_id, "val/acc")] == [1]
        assert run.data.params["data.val_fraction"] == "0.1"
    # The study names its metric (the dashboard's axis), and pruned trials keep their run ids.
    import optuna

    study = optuna.load_study(study_name="lenet", storage=f"sqlite:///{workspace / 'mlruns' / 'optuna.db'}")
    assert study.metric_names == ["val/acc"]
    assert sorted(t.user_attrs["mlflow.run_id"] for t in study.trials) == sorted(r.info.run_id for r in children)


def test_failed_trials_leave_the_study_usable_and_resume_adds_trials(workspace, capfd):
    study_dir = workspace / "mlruns"
    # Softmax regression at lr ~1e38 overflows to NaN: every trial of this space fails, the baseline too.
    nan_space = ["search.space.train.lr.low=1e37", "search.space.train.lr.high=1e38",
                 "search.space.train.lr.log=true"]
    first = studies.tune("softmax", [*QUICK, *nan_space], studies.TuneOptions(trials=2, seed=1, progress=False))
    assert first["states"]["FAIL"] == 2 and first["best_value"] is None
    assert (study_dir / "optuna.db").exists()
    c, parents, children = _runs("softmax")
    assert {r.info.status for r in children} == {"FAILED"}
    assert {r.data.tags["optuna.state"] for r in children} == {"FAIL"}
    assert all("NonFiniteLoss" in r.data.tags["mxlab.error"] for r in children)
    assert [p.info.status for p in parents] == ["FINISHED"]

    # The same study goes on with a sane space; its trials add up.
    second = studies.tune("softmax", QUICK, studies.TuneOptions(trials=2, seed=1, pruner="none", progress=False))
    assert second["n_trials"] == 4 and second["states"]["COMPLETE"] == 2 and second["states"]["FAIL"] == 2
    assert second["parent_run_id"] != first["parent_run_id"]
    assert 0 < second["best_value"] <= 1
    study = optuna.load_study(study_name="softmax", storage=storage.storage_url())
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert study.trials[0].params["train.lr"] >= 1e37   # the baseline, moved into the NaN range, ran first

    c, parents, children = _runs("softmax")
    complete = [r for r in children if r.data.tags["optuna.state"] == "COMPLETE"]
    assert len(children) == 4 and len(complete) == 2
    assert all(r.info.status == "FINISHED" for r in complete)
    parent = c.get_run(second["parent_run_id"])
    assert parent.data.metrics["trials.complete"] == 2 and parent.data.metrics["best_value"] == second["best_value"]
    assert float(parent.data.params["best.train.lr"]) == pytest.approx(second["best_params"]["train.lr"])
    plots = {a.path for a in c.list_artifacts(second["parent_run_id"], "plots")}
    assert plots == {f"plots/{name}.html" for name in ("optimization_history", "param_importances",
                                                       "parallel_coordinate", "intermediate_values")}
    # The first invocation had no COMPLETE trial: importances were skipped with the reason, the rest drawn.
    skipped = json.loads(c.get_run(first["parent_run_id"]).data.tags["mxlab.plots_skipped"])
    assert "param_importances" in skipped and "needs at least 2 COMPLETE" in skipped["param_importances"]

    # `mxlab best` and `mxlab run --best`: the retrained run carries the best params and links to the trial.
    capfd.readouterr()
    assert cli.main(["best", "softmax", "--json"]) == 0
    best = json.loads(capfd.readouterr().out)
    assert best["trial"] == second["best_trial"] and best["params"] == second["best_params"]
    assert cli.main(["run", "softmax", "--best", "--json", "train.epochs=1", "data.limit=256"]) == 0
    run = c.get_run(json.loads(capfd.readouterr().out)["run_id"])
    assert float(run.data.params["train.lr"]) == pytest.approx(best["params"]["train.lr"])
    assert float(run.data.params["train.wd"]) == pytest.approx(best["params"]["train.wd"])
    assert run.data.params["train.epochs"] == "1"
    assert run.data.tags["mxlab.study"] == "softmax" and run.data.tags["mxlab.trial"] == str(best["trial"])
    assert "mlflow.parentRunId" not in run.data.tags


def test_json_output_is_one_object_on_stdout(workspace, capfd):
    code = cli.main(["tune", "lenet", "--trials", "1", "--seed", "3", "--study", "lenet-json", "--json",
                     "--storage", f"sqlite:///{workspace / 'elsewhere' / 'studies.db'}", *QUICK])
    out, err = capfd.readouterr()
    assert code == 0
    result = json.loads(out)   # the whole of stdout is one JSON object
    assert set(result) >= {"study", "storage", "n_trials", "states", "best_value", "best_params", "parent_run_id"}
    assert result["study"] == "lenet-json" and result["n_trials"] == 1
    assert result["storage"].endswith("elsewhere/studies.db")
    assert result["best_params"] == {"train.lr": 0.9, "train.wd": 1e-6}   # the enqueued baseline
    assert "trial 0" in err   # progress went to stderr
    assert "[I " not in err, err   # Optuna's own line per trial stays off: mxlab says it once
    assert (workspace / "elsewhere" / "studies.db").exists() and not (workspace / "mlruns" / "optuna.db").exists()
    c, parents, children = _runs("lenet")
    assert parents[0].data.tags["mxlab.study"] == "lenet-json"
    assert parents[0].data.tags["mxlab.sampler"] == "tpe" and parents[0].data.tags["mxlab.pruner"] == "median"
    assert children[0].data.tags["optuna.state"] == "COMPLETE" and children[0].info.status == "FINISHED"
    assert result["best_run_id"] == children[0].info.run_id


def test_storage_password_is_removed():
    assert storage.redact("postgresql://mxlab:s3cr%40t@db.lab:5432/optuna") == "postgresql://mxlab@db.lab:5432/optuna"
    assert storage.redact("sqlite:////tmp/x/optuna.db") == "sqlite:////tmp/x/optuna.db"


def test_a_password_typed_on_the_command_line_stays_out_of_notes_and_links():
    from mxlab.console import ui_url
    from mxlab.naming import command_line

    noted = command_line(["mxlab", "tune", "lenet", "--storage", "postgresql://mxlab:s3cr3t@db:5432/optuna",
                          "--storage=postgresql://mxlab:s3cr3t@db/optuna", "train.lr=0.1"])
    assert noted == ("mxlab tune lenet --storage postgresql://mxlab@db:5432/optuna "
                     "--storage=postgresql://mxlab@db/optuna train.lr=0.1")
    assert "s3cr3t" not in ui_url("http://me:s3cr3t@mlflow.lab:5000", "1", "abc")


def test_resumed_study_must_keep_its_metric(workspace):
    studies.tune("lenet", QUICK, studies.TuneOptions(trials=1, pruner="none", progress=False))
    with pytest.raises(ValueError, match="optimises val/acc, but search.metric is val/loss"):
        studies.tune("lenet", [*QUICK, "search.metric=val/loss", "search.direction=maximize"],
                  studies.TuneOptions(trials=1, progress=False))
    with pytest.raises(ValueError, match="maximizes, but search.direction is minimize"):
        studies.tune("lenet", [*QUICK, "search.metric=val/loss"], studies.TuneOptions(trials=1, progress=False))
    assert load_spec("lenet").search.metric == "val/acc"


def test_dashboard_serves_the_study_on_localhost_only(workspace):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    studies.load_or_create_study(space.tuning_spec("lenet", QUICK)[0], "lenet",
                              storage.open_storage(storage.storage_url(), heartbeat=None))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mxlab.cli", "dashboard", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, None
        while body is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = json.loads(response.read())
            except OSError:
                time.sleep(0.3)
        assert body is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        assert [s["study_name"] for s in body["study_summaries"]] == ["lenet"]
        # The kernel's table of listening sockets (state 0A): the port is bound to 127.0.0.1 only.
        rows = [line.split() for line in open("/proc/net/tcp").read().splitlines()[1:]]
        bound = {row[1].split(":")[0] for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == port}
        assert bound == {"0100007F"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_metric_the_experiment_lacks_stops_the_study_after_one_trial(workspace, capsys):
    # A metric the task never reports is refused with the spec, before any trial.
    assert cli.main(["tune", "lenet", "search.metric=val/ppl", *QUICK]) == 2
    assert "search.metric: got 'val/ppl'; allowed: a metric of task classification" in capsys.readouterr().err
    # One the task reports but this run does not (linreg has no test split) stops the study after one trial.
    code = cli.main(["tune", "linreg", "--trials", "3", "search.metric=test/loss", *QUICK])
    assert code == 2
    assert "search.metric 'test/loss' is not among this run's metrics" in capsys.readouterr().err
    study = optuna.load_study(study_name="linreg", storage=storage.storage_url())
    assert [t.state.name for t in study.trials] == ["FAIL"]   # one trial, not three
    c, parents, children = _runs("linreg")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert [r.data.tags["optuna.state"] for r in children] == ["FAIL"]


def test_a_stop_after_a_trial_s_run_finished_is_retried_by_taking_that_run_s_result(workspace, monkeypatch):
    from mxlab.tuning import trials

    real_close = trials.close_child_run

    def stopped_while_closing(c, run_id, state, error=None):
        if state == "COMPLETE":   # the run has just FINISHED; the trial is not told yet
            raise KeyboardInterrupt
        real_close(c, run_id, state, error)

    monkeypatch.setattr(trials, "close_child_run", stopped_while_closing)
    with pytest.raises(KeyboardInterrupt):
        studies.tune("softmax", QUICK, studies.TuneOptions(trials=1, seed=0, pruner="none", progress=False))
    c, _, [finished] = _runs("softmax")
    assert finished.info.status == "FINISHED" and finished.data.tags["optuna.state"] == "FAIL"

    monkeypatch.setattr(trials, "close_child_run", real_close)
    again = studies.tune("softmax", QUICK, studies.TuneOptions(trials=1, seed=0, pruner="none", progress=False))
    study = optuna.load_study(study_name="softmax", storage=storage.storage_url())
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    retry = study.trials[1]
    assert retry.user_attrs["mlflow.run_id"] == finished.info.run_id   # no second run, no epoch trained again
    assert retry.value == again["best_value"] == finished.data.metrics["val/acc"]
    c, _, children = _runs("softmax")
    assert [r.info.run_id for r in children] == [finished.info.run_id]
    run = c.get_run(finished.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]
