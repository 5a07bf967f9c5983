"""Book parity table: real runs land in docs/results.md beside the book's numbers; nothing is invented."""
from __future__ import annotations

import json

from mxlab import reproduce
from mxlab.reproduce import ROWS, Row, meets_book, render
from mxlab.workspace import experiment_names


def test_every_row_names_a_real_experiment_and_every_experiment_has_a_row():
    assert {r.experiment for r in ROWS} == set(experiment_names())


def test_meets_book_uses_test_accuracy_minus_one_point():
    row = Row("softmax", {"test/acc": 0.840})
    assert meets_book(row, {"test/acc": 0.8301}) == "yes"
    assert meets_book(row, {"test/acc": 0.8299}) == "no"
    assert meets_book(Row("linreg", {"train/loss": 5e-5}), {"train/loss": 1e-4}) == ""


def test_reproduce_runs_and_renders(workspace, tmp_path):
    docs = tmp_path / "docs"
    path = reproduce.reproduce(["linreg", "weight_decay_scratch"], docs=docs, seeds=2)
    stored = json.loads((docs / "results.json").read_text())
    assert stored["linreg"]["seeds"] == [42, 43] and len(stored["linreg"]["run_ids"]) == 2
    per_seed = [m["train/loss"] for m in stored["linreg"]["per_seed"]]
    assert per_seed[0] != per_seed[1]
    assert abs(stored["linreg"]["metrics"]["train/loss"] - sum(per_seed) / 2) < 1e-12
    assert set(stored) == {"linreg", "weight_decay_scratch lambda=0", "weight_decay_scratch lambda=3"}
    assert stored["linreg"]["metrics"]["train/loss"] < 1e-3
    text = path.read_text()
    assert "| linreg | train/loss 5e-05 | train/loss" in text and "(mean of 2 seeds; train/loss" in text
    assert "| vgg | " in text and "not run on this machine" in text
    lam0 = stored["weight_decay_scratch lambda=0"]["metrics"]["l2_norm_w"]
    lam3 = stored["weight_decay_scratch lambda=3"]["metrics"]["l2_norm_w"]
    assert lam0 / lam3 > 100           # the book's effect of weight decay
    assert "weight_decay_scratch: lambda=3 shrinks the L2 norm of w" in text


def test_render_marks_a_miss():
    results = {"lenet": {"metrics": {"train/loss": 0.7, "train/acc": 0.7, "test/acc": 0.70}, "epoch": 5,
                         "epochs": 5, "seconds_per_epoch": 3.0, "device": "cpu", "run_id": "x"}}
    line = next(l for l in render(results).splitlines() if l.startswith("| lenet |"))
    assert "| no |" in line and "test/acc 0.7" in line
