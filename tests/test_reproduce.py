"""Book parity table: real runs land in docs/results.md beside the book's numbers; nothing is invented."""
from __future__ import annotations

import json

import pytest

from mxlab import cli, reproduce
from mxlab.reproduce import ROWS, Row, meets_book_code, render
from mxlab.workspace import experiment_names
from tests.conftest import REPO
from tests.test_presets import own_workspace  # noqa: F401  (a fixture: a workspace of its own)


def test_every_row_names_a_real_experiment_and_every_experiment_has_a_row():
    assert {r.experiment for r in ROWS} == set(experiment_names(REPO))


def test_the_verdict_compares_with_the_books_code_here():
    code = {"test/acc": 0.840, "train/loss": 0.49}
    assert meets_book_code({"test/acc": 0.8301}, code) == "yes"
    assert meets_book_code({"test/acc": 0.8299}, code) == "no"
    assert meets_book_code({"test/acc": 0.86}, code) == "yes"                 # better is fine
    assert meets_book_code({"train/ppl": 10.1}, {"train/ppl": 10.0}) == "yes"   # within 1%
    assert meets_book_code({"train/ppl": 10.2}, {"train/ppl": 10.0}) == "no"
    assert meets_book_code({"l2_norm_w": 1.0}, {"l2_norm_w": 2.0}, ["l2_norm_w"]) == ""
    assert meets_book_code({"train/loss": 1.0}, {"train/loss": 2.0}, ["train/loss"]) == ""


@pytest.mark.slow
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
    assert "| linreg | train/loss 5e-05 | not run | train/loss " in text and " (n=2) |" in text
    assert "| vgg | " in text and "not run on this machine" in text
    lam0 = stored["weight_decay_scratch lambda=0"]["metrics"]["l2_norm_w"]
    lam3 = stored["weight_decay_scratch lambda=3"]["metrics"]["l2_norm_w"]
    assert lam0 / lam3 > 100           # the book's effect of weight decay
    assert "weight_decay_scratch: lambda=3 shrinks the L2 norm of w" in text
    # Seeds can start elsewhere; a rerun replaces mxlab's numbers and keeps the book code's beside them.
    reproduce._store(docs, "linreg", "book_code", {"metrics": {"train/loss": 5e-5}, "per_seed": [], "epoch": 3,
                                                   "seconds_per_epoch": 0.1})
    reproduce.reproduce(["linreg"], docs=docs, seeds=1, first_seed=7)
    stored = json.loads((docs / "results.json").read_text())
    assert stored["linreg"]["seeds"] == [7] and stored["linreg"]["book_code"]["metrics"] == {"train/loss": 5e-5}


def _result(acc: float, n: int = 3) -> dict:
    per_seed = [{"test/acc": acc + d, "train/loss": 0.5, "train/acc": 0.8} for d in (-0.01, 0, 0.01)[:n]]
    return {"metrics": {"test/acc": acc, "train/loss": 0.5, "train/acc": 0.8}, "per_seed": per_seed, "epoch": 5,
            "epochs": 5, "seconds_per_epoch": 3.0, "device": "cpu", "seeds": [1, 2, 3][:n]}


def test_render_shows_book_code_and_mxlab_with_spread_and_marks_a_miss():
    results = {"lenet": {**_result(0.70), "book_code": _result(0.75)}, "mlp": {**_result(0.85), "book_code": _result(0.855)}}
    lines = render(results).splitlines()
    lenet = next(l for l in lines if l.startswith("| lenet |"))
    cells = [c.strip() for c in lenet.split("|")]
    assert cells[3].startswith("test/acc 0.75 ± 0.01 (n=3)") and cells[4].startswith("test/acc 0.7 ± 0.01 (n=3)")
    # The per-seed values 0.69, 0.70, 0.71 against 0.74, 0.75, 0.76: -0.05, with a standard error of
    # sqrt(0.01^2/3 + 0.01^2/3) = 0.0082.
    assert cells[5] == "no (-0.05, s.e. 0.0082)"
    assert next(l for l in lines if l.startswith("| mlp |")).split("|")[5].strip().startswith("yes (-0.005, ")
    assert next(l for l in lines if l.startswith("| batchnorm |")).split("|")[3].strip() == "not run"


def test_reproduce_refuses_what_it_cannot_do(workspace):
    with pytest.raises(ValueError, match="--code 'gpu'"):
        reproduce.reproduce(["linreg"], code="gpu")
    with pytest.raises(ValueError, match="--preset tuned trains mxlab with the preset"):
        reproduce.reproduce(["linreg"], code="both", preset="tuned")
    assert cli.main(["reproduce", "linreg", "--seeds", "0"]) == 2


@pytest.mark.slow
def test_preset_rows_and_the_tuning_report(own_workspace):
    """A tiny study's preset trained by reproduce --preset: tuning-results.md, its JSON and its plots."""
    root = own_workspace
    assert cli.main(["tune", "linreg", "--trials", "3", "--seed", "0", "--save-preset", "tuned", "train.epochs=1",
                     "data.limit=200"]) == 0
    docs = root / "docs"
    assert cli.main(["reproduce", "linreg", "--preset", "tuned", "--seeds", "2"]) == 0
    stored = json.loads((docs / "results.json").read_text())
    got = stored["linreg"]["presets"]["tuned"]
    study = json.loads((docs / "tuning.json").read_text())["linreg"]
    assert got["seeds"] == [42, 43] and got["spec"]["train.lr"] == pytest.approx(study["best"]["params"]["train.lr"],
                                                                                     rel=1e-5)
    assert study["n_trials"] == 3 and sum(study["states"].values()) == 3 and study["wall_seconds"] > 0
    assert set(study["importances"]) <= {"train.lr", "train.wd"}
    for file in study["plots"].values():
        assert (docs / file).read_bytes()[:4] == b"\x89PNG"
    text = (docs / "tuning-results.md").read_text()
    row = next(l for l in text.splitlines() if l.startswith("| linreg |"))
    assert "train/loss 5e-05" in row and " (n=2)" in row and "train.lr " in row and "| 3 (" in row
    assert "![linreg history](tuning/linreg-history.png)" in text
    # Rendering again needs no study: the evidence is kept in tuning.json.
    (root / "mlruns" / "optuna.db").unlink()
    assert cli.main(["reproduce", "--render"]) == 0
    assert (docs / "tuning-results.md").read_text() == text


@pytest.mark.slow
def test_book_code_and_mxlab_side_by_side_on_the_full_data(workspace, tmp_path):
    docs = tmp_path / "docs"
    reproduce.reproduce(["softmax"], docs=docs, seeds=1, code="both", first_seed=1)
    stored = json.loads((docs / "results.json").read_text())["softmax"]
    assert stored["book_code"]["seeds"] == stored["seeds"] == [1]
    assert abs(stored["book_code"]["metrics"]["test/acc"] - stored["metrics"]["test/acc"]) < 0.015
    line = next(l for l in (docs / "results.md").read_text().splitlines() if l.startswith("| softmax |"))
    assert line.split("|")[5].strip() == "yes"
