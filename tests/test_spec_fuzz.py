"""Property-based: whatever YAML document or override string arrives, the spec loader either validates it or
raises its own SpecError, which names where and what; nothing else escapes."""
from __future__ import annotations

import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxlab.spec import SpecError, from_dict

KEYS = ["description", "task", "model", "data", "train", "search", "name", "lr", "wd", "epochs", "batch_size",
        "limit", "val_fraction", "optimizer", "optimizer_params", "early_stopping", "metric", "patience",
        "space", "train.lr", "low", "high", "log", "device", "seed", "activation", "dropout1", "num_hiddens"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.sampled_from(["lenet", "mlp", "fashion_mnist", "sgd", "nag", "val/acc", "1e-3", "inf", "",
                                     "cpu:0,1", "gpu", "auto", ".nan", "maximize"]),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=20)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
BASE = {"model": {"name": "lenet"}, "data": {"name": "fashion_mnist"}}
OVERRIDES = st.lists(st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["train.lr", "train.epochs", "data.limit", "model.activation",
                                                       "search.space.train.lr.low", "train.early_stopping.patience",
                                                       "train.optimizer_params.momentum", "search.metric", "task",
                                                       "train", "nosuch.key", "train.early_stopping"]),
              st.text(alphabet=string.printable, max_size=16)),
    st.text(alphabet=string.printable, max_size=24)), max_size=4)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load(document, overrides) -> None:
    try:
        from_dict("fuzz", document, overrides)
    except SpecError:
        pass


@SETTINGS
@given(DOCUMENTS, OVERRIDES)
def test_random_documents_and_overrides_validate_or_raise_spec_error(document, overrides):
    load(document, overrides)


@SETTINGS
@given(DOCUMENTS, OVERRIDES)
def test_random_changes_to_a_valid_spec_validate_or_raise_spec_error(document, overrides):
    load({**BASE, **document}, overrides)


@SETTINGS
@given(st.text(max_size=200))
def test_random_yaml_text_validates_or_raises_spec_error(tmp_path_factory, text):
    from mxlab.spec import read_yaml

    path = tmp_path_factory.mktemp("fuzz") / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load(read_yaml(path), [])
    except SpecError:
        pass


def test_the_loader_does_raise_for_garbage():
    with pytest.raises(SpecError):
        from_dict("fuzz", {"model": [1, 2]}, [])
    assert yaml.safe_dump(BASE)   # the base spec itself is valid:
    from_dict("fuzz", BASE, [])
