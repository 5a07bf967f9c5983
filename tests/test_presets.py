"""Presets: what a study writes with --save-preset, what the committed ones hold, and how they are applied."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

import mxlab
from mxlab import cli, presets, workspace
from mxlab.spec import SpecError, load_spec
from tests.conftest import REPO

# The committed presets: each must say where it came from and load at the book's budget.
TUNED = sorted(p.parent.name for p in (REPO / "experiments").glob("*/tuned.yaml"))


@pytest.fixture
def own_workspace(tmp_path, monkeypatch):
    """A workspace holding a copy of linreg: a preset written here never lands in the repository."""
    root = tmp_path / "ws"
    shutil.copytree(REPO / "experiments" / "linreg", root / "experiments" / "linreg")
    monkeypatch.setenv("MXLAB_ROOT", str(root))
    for name in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MXLAB_OPTUNA_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    return root


def test_nest_turns_dotted_params_into_the_spec_layout():
    assert presets.nest({"train.lr": 0.123456789, "train.wd": 1e-5, "model.dropout1": 0.25, "data.batch_size": 64}) \
        == {"data": {"batch_size": 64}, "model": {"dropout1": 0.25}, "train": {"lr": 0.123457, "wd": 1e-5}}


@pytest.mark.slow
def test_save_preset_writes_the_best_trial_with_its_header(own_workspace, capsys):
    folder = own_workspace / "experiments" / "linreg"
    code = cli.main(["tune", "linreg", "--trials", "3", "--seed", "1", "--json", "--save-preset", "tuned",
                     "train.epochs=1", "data.limit=200"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    path = folder / "tuned.yaml"
    assert result["preset"] == str(path)
    text = path.read_text()
    head = [line for line in text.splitlines() if line.startswith("#")]
    assert head[0].startswith(presets.MARK)
    fields = dict(line[2:].split(": ", 1) for line in head[2:])
    assert fields["study"].startswith("linreg (sqlite:///")
    assert fields["trials"].startswith("3 (COMPLETE")
    assert fields["best value"].startswith(f"val/loss = {result['best_value']:.6g} (minimize), trial "
                                           f"{result['best_trial']}")
    assert fields["tuned with"] == "train.epochs=1 data.limit=200"
    assert len(fields["date"]) == 20 and fields["date"].endswith("Z")
    assert fields["mxlab commit"]
    # The body is the best trial's params, and only them: the study's own overrides stay out of the preset.
    body = yaml.safe_load(text)
    assert set(body) == {"train"} and set(body["train"]) == {"lr", "wd"}
    spec = load_spec("linreg", preset="tuned")
    for key, value in result["best_params"].items():
        assert spec.flat()[key] == pytest.approx(value, rel=1e-5)
    assert spec.train.epochs == load_spec("linreg").train.epochs
    # The command line still wins over the preset, and the API applies it like `mxlab run --preset`.
    assert load_spec("linreg", ["train.lr=0.01"], preset="tuned").train.lr == 0.01
    run = mxlab.run("linreg", {"train.epochs": 1, "data.limit": 100}, preset="tuned", track=False, progress=False)
    assert run.status == "FINISHED"
    assert workspace.presets("linreg") == ["tuned"]
    assert cli.main(["list"]) == 0 and " tuned " in capsys.readouterr().out
    # A second study run overwrites the preset mxlab wrote (its header says so).
    assert cli.main(["tune", "linreg", "--trials", "1", "--save-preset", "tuned", "train.epochs=1",
                     "data.limit=200"]) == 0
    assert "# trials: 4 (" in path.read_text()


@pytest.mark.slow
def test_save_preset_refuses_a_bad_name_before_the_study_and_a_hand_written_file(own_workspace, capsys):
    assert cli.main(["tune", "linreg", "--trials", "1", "--save-preset", "../x", "train.epochs=1"]) == 2
    assert "--save-preset '../x'" in capsys.readouterr().err
    assert not (own_workspace / "mlruns" / "optuna.db").exists()
    mine = own_workspace / "experiments" / "linreg" / "mine.yaml"
    mine.write_text("train: {lr: 0.01}\n")
    assert cli.main(["tune", "linreg", "--trials", "1", "--save-preset", "mine", "train.epochs=1",
                     "data.limit=200"]) == 2
    assert "was not written by mxlab: not overwriting it" in capsys.readouterr().err
    assert mine.read_text() == "train: {lr: 0.01}\n"


def test_a_preset_key_the_spec_refuses_is_an_error_naming_the_file(own_workspace):
    path = own_workspace / "experiments" / "linreg" / "tuned.yaml"
    path.write_text("train: {lrr: 0.1}\n")
    with pytest.raises(SpecError, match=rf"^{path}: train\.lrr: unknown key"):
        load_spec("linreg", preset="tuned")
    assert cli.main(["check", "linreg"]) == 1


def test_the_books_tuned_rows_have_presets():
    assert "softmax" in TUNED and set(TUNED) <= {"softmax", "mlp", "dropout", "lenet", "batchnorm"}


@pytest.mark.parametrize("name", TUNED)
def test_committed_presets_load_and_say_where_they_came_from(name):
    path = REPO / "experiments" / name / "tuned.yaml"
    text = path.read_text()
    assert text.startswith(presets.MARK)
    for field in ("study", "trials", "best value", "date", "mxlab commit"):
        assert f"\n# {field}: " in text
    assert "# best value: val/acc = " in text          # chosen on the held-out validation split
    values = yaml.safe_load(text)
    spec = load_spec(name, preset="tuned", root=REPO)
    assert spec.train.epochs == 5 and spec.data.batch_size == 256     # the book's budget
    assert spec.data.val_fraction == 0                              # the preset trains on the full split
    assert spec.train.lr == values["train"]["lr"]
    searched = {f"{block}.{key}" for block, keys in values.items() for key in keys}
    assert searched == set(load_spec(name, root=REPO).search.space)   # the study's space, nothing else
