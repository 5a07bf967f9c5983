"""Spec loading: merge order, type conversion, and errors that say where, what and what is allowed."""
from __future__ import annotations

import pytest

from mxlab.spec import Range, SpecError, dump_yaml, from_dict, load_spec, read_yaml


def write_experiment(root, name, text):
    folder = root / "experiments" / name
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text(text)
    return folder / "experiment.yaml"


@pytest.fixture
def root(tmp_path, monkeypatch):
    (tmp_path / "experiments").mkdir()
    monkeypatch.setenv("MXLAB_ROOT", str(tmp_path))
    return tmp_path


BASE = "model: {name: lenet}\ndata: {name: fashion_mnist}\n"


def test_merge_order_defaults_file_overrides(root):
    write_experiment(root, "e", BASE + "train: {lr: 0.5, epochs: 3}\n")
    spec = load_spec("e", ["train.epochs=1"])
    assert spec.train.lr == 0.5            # from the file
    assert spec.train.epochs == 1          # the override wins
    assert spec.data.batch_size == 256     # the default
    assert spec.search.metric == "val/acc" and spec.search.direction == "maximize"


def test_exponent_strings_become_floats(root):
    write_experiment(root, "e", BASE + "train: {lr: 1e-3, wd: 5e-4}\n")
    spec = load_spec("e")
    assert spec.train.lr == pytest.approx(1e-3) and isinstance(spec.train.lr, float)
    assert spec.train.wd == pytest.approx(5e-4)
    assert load_spec("e", ["train.lr=2e-2"]).train.lr == pytest.approx(0.02)


def test_unknown_key_names_file_key_and_allowed(root):
    path = write_experiment(root, "e", BASE + "train: {lr: 0.1, learning_rate: 0.2}\n")
    with pytest.raises(SpecError) as err:
        load_spec("e")
    message = str(err.value)
    assert str(path) in message and "train.learning_rate" in message and "unknown key" in message
    assert "lr" in message and "epochs" in message


def test_wrong_type_and_impossible_values(root):
    path = write_experiment(root, "e", BASE + "train: {lr: -0.1}\n")
    with pytest.raises(SpecError, match=r"train\.lr: got -0\.1; allowed: a number > 0") as err:
        load_spec("e")
    assert str(path) in str(err.value)
    with pytest.raises(SpecError, match=r"command line: train\.epochs: got 'many'; allowed: an integer"):
        load_spec("e", ["train.lr=0.1", "train.epochs=many"])
    with pytest.raises(SpecError, match=r"train\.optimizer: got 'rmsprp'; allowed: one of .*adam.*momentum.*rmsprop.*sgd"):
        load_spec("e", ["train.lr=0.1", "train.optimizer=rmsprp"])
    for bad in ("inf", ".inf", "1e400", "nan"):    # never a setting: refused with the spec, not mid-run
        for key in ("train.lr", "train.wd", "train.clip_gradient"):
            with pytest.raises(SpecError, match=rf"command line: {key}: got .*allowed: .*finite number"):
                load_spec("e", ["train.lr=0.1", f"{key}={bad}"])
    for seed in ("-1", "2147483648"):
        with pytest.raises(SpecError, match=rf"train\.seed: got {seed}; allowed: an integer in \[0"):
            load_spec("e", ["train.lr=0.1", f"train.seed={seed}"])
    with pytest.raises(SpecError, match=r"data\.val_fraction: got 1\.5"):
        load_spec("e", ["train.lr=0.1", "data.val_fraction=1.5"])


def test_model_options_checked_against_builder(root):
    write_experiment(root, "e", "model: {name: lenet, activation: tanh}\ndata: {name: fashion_mnist}\n")
    with pytest.raises(SpecError, match=r"model\.activation: got 'tanh'; allowed: one of sigmoid, relu"):
        load_spec("e")
    with pytest.raises(SpecError, match=r"model\.depth: unknown key; allowed: .*activation"):
        load_spec("e", ["model.activation=relu", "model.depth=3"])


def test_unknown_model_lists_known(root):
    write_experiment(root, "e", "model: {name: lenett}\ndata: {name: fashion_mnist}\n")
    with pytest.raises(SpecError, match=r"model\.name: got 'lenett'; allowed: one of .*lenet"):
        load_spec("e")


def test_duplicate_yaml_key_is_an_error(root):
    path = write_experiment(root, "e", BASE + "train: {lr: 0.1}\ntrain: {lr: 0.2}\n")
    with pytest.raises(SpecError, match="duplicate key 'train'") as err:
        read_yaml(path)
    assert str(path) in str(err.value)


def test_any_optimizer_mxnet_registers_with_its_own_options(root):
    write_experiment(root, "e", BASE)
    spec = load_spec("e", ["train.optimizer=rmsprop", "train.optimizer_params={gamma1: 0.8}"])
    assert spec.train.optimizer == "rmsprop" and spec.train.optimizer_params == {"gamma1": 0.8}
    assert spec.flat()["train.optimizer_params.gamma1"] == 0.8
    assert load_spec("e", ["train.optimizer=nag", "train.optimizer_params.momentum=0.9"]).train.optimizer_params == {
        "momentum": 0.9}
    with pytest.raises(SpecError, match=r"train\.optimizer_params\.gamma1: 'adagrad' takes no option 'gamma1'; "
                                        r"allowed: .*eps"):
        load_spec("e", ["train.optimizer=adagrad", "train.optimizer_params.gamma1=0.9"])
    with pytest.raises(SpecError, match=r"train\.optimizer_params\.learning_rate: got 0\.1; allowed: set it with "
                                        r"train\.lr"):
        load_spec("e", ["train.optimizer=adam", "train.optimizer_params.learning_rate=0.1"])


def test_early_stopping_block(root):
    write_experiment(root, "e", BASE + "train:\n  early_stopping: {patience: 2}\n")
    with pytest.raises(SpecError, match=r"train\.early_stopping\.metric: got 'val/acc'; allowed: a val/ metric "
                                        r"with data\.val_fraction > 0"):
        load_spec("e")
    spec = load_spec("e", ["data.val_fraction=0.1", "train.early_stopping.min_delta=0.01"])
    stop = spec.train.early_stopping
    assert (stop.metric, stop.patience, stop.min_delta) == ("val/acc", 2, 0.01)   # the file's patience kept
    assert spec.replace(**{"train.lr": 0.2}).train.early_stopping == stop          # survives a round trip
    with pytest.raises(SpecError, match=r"command line: train\.early_stopping\.patience: got 0; allowed: an integer >= 1"):
        load_spec("e", ["data.val_fraction=0.1", "train.early_stopping.patience=0"])
    with pytest.raises(SpecError, match=r"train\.early_stopping\.mode: unknown key; allowed: metric, min_delta, patience"):
        load_spec("e", ["data.val_fraction=0.1", "train.early_stopping.mode=max"])
    assert load_spec("e", ["train.early_stopping=null"]).train.early_stopping is None


def test_presets_layer_between_the_file_and_the_command_line(root):
    path = write_experiment(root, "e", BASE + "train: {lr: 0.5, epochs: 3}\n")
    (path.parent / "tuned.yaml").write_text("# found by a study\ntrain: {lr: 0.2, wd: 1.0e-4}\n")
    spec = load_spec("e", ["train.wd=0.001"], preset="tuned")
    assert (spec.train.lr, spec.train.wd, spec.train.epochs) == (0.2, 0.001, 3)
    (path.parent / "tuned.yaml").write_text("train: {lr: -1}\n")
    with pytest.raises(SpecError, match=rf"^{path.parent / 'tuned.yaml'}: train\.lr: got -1"):
        load_spec("e", preset="tuned")
    with pytest.raises(ValueError, match=r"experiment 'e' has no preset 'fast' .*; its presets: tuned"):
        load_spec("e", preset="fast")


def test_unknown_experiment_lists_known_and_names_are_confined(root):
    write_experiment(root, "alpha", BASE)
    with pytest.raises(SpecError, match="unknown experiment 'beta'.*known experiments: alpha"):
        load_spec("beta")
    for bad in ("../alpha", "a/b", "..", "/etc"):
        with pytest.raises(SpecError, match="not allowed"):
            load_spec(bad)


def test_search_space_errors(root):
    write_experiment(root, "e", BASE + "search:\n  space:\n    train.lr: {low: 0.5, high: 0.1}\n")
    with pytest.raises(SpecError, match=r"search\.space\.train\.lr: .*allowed: low <= high"):
        load_spec("e")
    with pytest.raises(SpecError, match="low > 0 when log is true"):
        load_spec("e", ["search.space.train.lr.low=0", "search.space.train.lr.log=true"])
    with pytest.raises(SpecError, match=r"'model\.dropout' cannot be searched"):
        load_spec("e", ["search.space.train.lr.low=0.01", "search.space.model.dropout.low=0.1",
                        "search.space.model.dropout.high=0.5"])


def test_search_space_overrides_patch_the_default_or_file_space(root):
    path = write_experiment(root, "e", BASE)
    spec = load_spec("e", ["search.space.train.lr.low=0.01"])
    assert spec.search.space["train.lr"] == Range(0.01, 1.0, True)          # only low changed
    assert "train.wd" in spec.search.space                                  # the rest of the default stays
    spec = load_spec("e", ["search.space.train.lr={low: 0.02, high: 0.5}"])
    assert spec.search.space["train.lr"] == Range(0.02, 0.5, False)
    with pytest.raises(SpecError, match=r"^command line: search\.space\.train\.lr"):
        load_spec("e", ["search.space.train.lr.high=0.001"])
    path.write_text(BASE + "search:\n  space:\n    train.wd: {low: 1.0, high: 0.1}\n")
    with pytest.raises(SpecError, match=f"^{path}: search\\.space\\.train\\.wd"):
        load_spec("e")


def test_search_metric_must_be_one_the_task_reports(root):
    write_experiment(root, "e", BASE)
    assert load_spec("e", ["search.metric=val/loss"]).search.direction == "minimize"
    with pytest.raises(SpecError, match=r"search\.metric: got 'val/ppl'; allowed: a metric of task classification"):
        load_spec("e", ["search.metric=val/ppl"])


def test_default_space_leaves_out_a_dropout_the_model_refuses(root):
    write_experiment(root, "one", "model: {name: mlp, num_hiddens: [256]}\ndata: {name: fashion_mnist}\n")
    write_experiment(root, "two", "model: {name: mlp, num_hiddens: [256, 256]}\ndata: {name: fashion_mnist}\n")
    assert set(load_spec("one").search.space) == {"train.lr", "train.wd", "model.dropout1"}
    assert set(load_spec("two").search.space) == {"train.lr", "train.wd", "model.dropout1", "model.dropout2"}
    with pytest.raises(SpecError, match=r"'train\.seed' cannot be searched"):
        load_spec("one", ["search.space.train.seed={low: 1, high: 5}"])


def test_default_space_and_round_trip(root):
    write_experiment(root, "e", BASE + "train: {lr: 0.9}\n")
    spec = load_spec("e")
    assert set(spec.search.space) == {"train.lr", "train.wd"}
    assert spec.search.space["train.lr"] == Range(0.09, 9.0, True)
    again = from_dict("e", read_yaml_text(dump_yaml(spec)))
    assert again.to_dict() == spec.to_dict()
    assert spec.flat()["train.lr"] == 0.9 and spec.flat()["model.activation"] == "sigmoid"
    assert spec.replace(**{"train.lr": 0.2}).train.lr == 0.2


def read_yaml_text(text):
    import yaml

    return yaml.safe_load(text)


def test_every_repository_experiment_validates():
    from mxlab.workspace import experiment_names
    from mxlab.train import build_net

    names = experiment_names()
    assert {"linreg_scratch", "linreg", "softmax_scratch", "softmax", "lenet"} <= set(names)
    for name in names:
        build_net(load_spec(name))
