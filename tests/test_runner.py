"""The runner and the Python API: one path from a spec to a run, tracked or not."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

import mxlab
from mxlab import runner, tracking
from mxlab.coerce import SpecError

from tests.conftest import REPO

# Recorded with a fixed seed (the specs' own, 42) before the runner moved out of tracking: the reorganisation
# must not change a single number. linreg is the book's full 3 epochs; softmax is 2 epochs on 5,000 images.
# Their source: the code before the move (commit e859374, the parent of the move), `mxlab run linreg --json` and
# `mxlab run softmax train.epochs=2 data.limit=5000 --json`; that commit, run again, gives these to every digit.
GOLDEN = {
    "linreg": ({}, {"train/loss": 6.884749233722687e-05, "l2_norm_w": 3.9438912868499756}),
    "softmax": ({"train.epochs": 2, "data.limit": 5000},
                {"train/loss": 0.95629677734375, "train/acc": 0.7068, "test/loss": 0.90229794921875,
                 "test/acc": 0.7064}),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_metrics_survive_the_move(workspace, name):
    overrides, expected = GOLDEN[name]
    result = mxlab.run(name, overrides, track=False, progress=False)
    assert result.run_id is None and result.status == "FINISHED"
    for key, value in expected.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_an_untracked_run_loads_neither_mlflow_nor_optuna(workspace):
    probe = ("import json, sys, mxlab\n"
             "r = mxlab.run('linreg', ['train.epochs=1'], track=False, progress=False)\n"
             "print(json.dumps({'loaded': sorted(m for m in ('mlflow', 'optuna', 'mxnet') if m in sys.modules),\n"
             "                  'run_id': r.run_id, 'loss': r.metrics['train/loss']}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["loaded"] == ["mxnet"]
    assert payload["run_id"] is None and math.isfinite(payload["loss"])
    assert not (workspace / "mlruns").exists()   # no store was created either


@pytest.mark.slow
def test_import_mxlab_imports_no_framework():
    probe = "import sys, mxlab; print(sorted(m for m in ('mxnet', 'mlflow', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


def test_overrides_as_a_dict_or_a_list_give_the_same_spec(workspace):
    as_dict = mxlab.load_spec("lenet", {"train.lr": 0.3, "data.limit": 100, "train.sample_prefixes": ["a", "b"]})
    as_list = mxlab.load_spec("lenet", ["train.lr=0.3", "data.limit=100", "train.sample_prefixes=[a, b]"])
    assert as_dict == as_list and as_dict.train.lr == 0.3
    with pytest.raises(TypeError, match="overrides: got the string"):
        mxlab.load_spec("lenet", "train.lr=0.3")


@pytest.mark.slow
def test_a_tracked_run_records_what_the_untracked_one_computes(workspace):
    spec = mxlab.load_spec("softmax", ["train.epochs=1", "data.limit=1000"])
    untracked = runner.run(spec, track=False, progress=False)
    tracked = runner.run(spec, progress=False)
    assert untracked.metrics["test/acc"] == tracked.metrics["test/acc"]
    run = tracking.client().get_run(tracked.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test/acc"] == tracked.metrics["test/acc"]
    assert run.data.tags["mxlab.pid"].isdigit() and run.data.tags["host"]


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_says_why(workspace):
    # No epoch can improve train/loss by 100: epoch 1 sets the best, epoch 2 is one stale epoch, then it stops.
    overrides = {"train.epochs": 5, "data.limit": 1000,
                 "train.early_stopping": {"metric": "train/loss", "patience": 1, "min_delta": 100}}
    result = runner.run(mxlab.load_spec("softmax", overrides), progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert re.match(r"early stopping at epoch 2: train/loss did not improve", result.stop_reason)
    run = tracking.client().get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mxlab.stopped_early"] == result.stop_reason
    # A patient enough run trains every epoch.
    patient = runner.run(mxlab.load_spec("softmax", {**overrides, "train.epochs": 2, "train.early_stopping.patience": 3}),
                         track=False, progress=False)
    assert len(patient.history) == 2 and patient.stop_reason is None


def test_a_callback_of_your_own_is_one_class_passed_to_run(workspace):
    from mxlab.callbacks import Callback

    class StopWhenGoodEnough(Callback):
        def on_epoch_end(self, state, metrics):
            if metrics["test/acc"] > 0.5:
                state.stop_reason = f"test/acc {metrics['test/acc']:.2f} > 0.5 at epoch {state.epoch}"

    result = mxlab.run("softmax", {"train.epochs": 5, "data.limit": 2000}, track=False, progress=False,
                       callbacks=[StopWhenGoodEnough()])
    assert len(result.history) < 5 and result.stop_reason.startswith("test/acc ")
    assert result.stop_reason.endswith(f"at epoch {len(result.history)}")


@pytest.mark.parametrize("optimizer, params", [("rmsprop", {"gamma1": 0.9}), ("nag", {"momentum": 0.9}),
                                               ("adagrad", {})])
def test_any_registered_optimizer_trains(workspace, optimizer, params):
    spec = mxlab.load_spec("lenet", {"train.epochs": 2, "data.limit": 1000, "train.lr": 0.01, "train.optimizer": optimizer,
                               "train.optimizer_params": params, "train.device": "cpu"})
    history = runner.run(spec, track=False, progress=False).history
    assert history[-1]["train/loss"] < history[0]["train/loss"]


def test_a_scratch_model_says_it_steps_with_its_own_sgd(workspace):
    # Refused with the spec (so `mxlab check` says it), before any data or network is made.
    message = r"train\.optimizer: got 'nag'; allowed: sgd: softmax_scratch is written from scratch"
    with pytest.raises(SpecError, match=message):
        mxlab.load_spec("softmax_scratch", {"train.optimizer": "nag"})
    with pytest.raises(SpecError, match=message):
        mxlab.run("softmax_scratch", {"train.optimizer": "nag", "data.limit": 100}, track=False, progress=False)


@pytest.mark.slow
def test_readme_from_python_example_runs(workspace, monkeypatch):
    """The README's "From Python" section is code a researcher pastes into a notebook: it must work."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    assert namespace["result"].status == "FINISHED"
    assert 0 < namespace["result"].metrics["test/acc"] <= 1
    assert namespace["study"]["best_value"] is not None


def test_the_running_loss_at_the_last_batch_is_the_epochs_train_loss(workspace):
    from mxlab.callbacks import Callback

    seen = []

    class Probe(Callback):
        def on_batch_end(self, state, batch, num_batches):
            if batch == num_batches:
                seen.append(state.running_loss())

    spec = mxlab.load_spec("softmax", {"train.epochs": 2, "data.limit": 1000, "train.device": "cpu:0,1"})
    result = runner.run(spec, track=False, progress=False, callbacks=[Probe()])
    assert seen == pytest.approx([h["train/loss"] for h in result.history], rel=1e-6)


def test_curves_drawn_again_on_a_kept_figure_are_the_picture_a_new_figure_draws(tmp_path, monkeypatch):
    """A study's trials plot the same panels one after the other: the figure is kept and redrawn. Whatever it
    drew before (other values, epochs, a wider log range, another layout in between), the picture must be the
    one a new figure draws."""
    def history(epochs, keys, value):
        return [{"epoch": e, **{k: value(k, e) for k in keys}} for e in range(1, epochs + 1)]

    regression = ["train/loss", "val/loss", "l2_norm_w"]
    classification = ["train/loss", "train/acc", "val/loss", "val/acc"]
    histories = [history(1, regression, lambda k, e: {"train/loss": 8.9, "val/loss": 4.1}.get(k, 1.9)),
                 history(5, regression, lambda k, e: 10.0 ** -e),   # a wide log range: another locator
                 history(5, classification, lambda k, e: 0.5 + e / 20 if k.endswith("acc") else 2 / e),
                 history(1, classification, lambda k, e: 0.7),
                 history(3, regression, lambda k, e: 1 + 1 / e)]
    monkeypatch.setattr(runner, "_KEPT_FIGURE", {})
    figures = []
    for i, h in enumerate(histories):
        runner.plot_curves(h, tmp_path / f"kept{i}.png")
        figures.append(next(iter(runner._KEPT_FIGURE.values())))
    assert figures[1] is figures[0] and figures[3] is figures[2]   # drawn again on the same figure
    assert figures[4] is not figures[0] and len(runner._KEPT_FIGURE) == 1   # only the last one is kept
    for i, h in enumerate(histories):
        runner._KEPT_FIGURE.clear()
        runner.plot_curves(h, tmp_path / f"new{i}.png")
        assert (tmp_path / f"kept{i}.png").read_bytes() == (tmp_path / f"new{i}.png").read_bytes(), i


@pytest.mark.parametrize("log_y", [False, True])
def test_curves_build_ticks_only_in_view_and_draw_the_same_picture(tmp_path, log_y):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import AutoLocator, LogLocator, MaxNLocator

    def draw(wrap, path):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot([1, 2, 3, 4, 5], [2.3, 1.2, 0.8, 0.61, 0.52] if log_y else [0.31, 0.52, 0.64, 0.70, 0.73], marker="o")
        if log_y:
            ax.set_yscale("log")
        ax.yaxis.set_major_locator(wrap(LogLocator(subs=(1.0, 2.0, 5.0)) if log_y else AutoLocator()))
        ax.xaxis.set_major_locator(wrap(MaxNLocator(integer=True)))
        fig.savefig(path, dpi=100)
        counts = len(ax.xaxis.get_major_locator()()), len(ax.yaxis.get_major_locator()())
        plt.close(fig)
        return path.read_bytes(), counts

    plain, (plain_x, plain_y) = draw(lambda locator: locator, tmp_path / "plain.png")
    in_view, (x, y) = draw(runner._in_view, tmp_path / "in_view.png")
    assert in_view == plain   # the same picture, pixel for pixel
    assert x < plain_x and y < plain_y   # from fewer ticks built
