"""The book's own code beside mxlab: d2lzh's loops on a small slice of the same verified data.

``make test`` installs d2lzh (``make parity``); a missing d2lzh fails here, it is not skipped.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import mxlab
from mxlab import parity

SLICE = {"limit": 5000, "epochs": 3}


def test_d2lzh_is_the_books_package():
    d2l = parity.d2l()
    for name in ("train_ch3", "train_ch5", "train_and_predict_rnn", "train_and_predict_rnn_gluon", "sgd",
                 "evaluate_accuracy", "grad_clipping", "data_iter_random", "data_iter_consecutive", "RNNModel"):
        assert callable(getattr(d2l, name)), name
    assert parity._version() == "1.0.0"


def test_batches_are_what_the_books_dataloader_gives():
    images = np.arange(10 * 28 * 28, dtype=np.uint8).reshape(10, 28, 28)
    labels = np.arange(10, dtype=np.uint8)
    np.random.seed(0)
    batches = list(parity.Batches(images, labels, 4, shuffle=True))
    assert [len(y) for _, y in batches] == [4, 4, 2]                 # the short last batch is kept
    X, y = batches[0]
    assert X.shape == (4, 1, 28, 28) and X.dtype == np.float32 and y.dtype == np.int32
    assert float(X.max().asscalar()) <= 1.0
    seen = np.concatenate([y.asnumpy() for _, y in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))   # a permutation, shuffled
    again = np.concatenate([y.asnumpy() for _, y in parity.Batches(images, labels, 4, shuffle=False)])
    assert list(again) == list(range(10))


@pytest.mark.parametrize("name", ["softmax", "softmax_scratch"])
def test_the_books_loop_and_mxlab_agree_on_a_slice(workspace, name):
    book = parity.run_image(name, 1, **SLICE)
    ours = mxlab.run(name, {"data.limit": SLICE["limit"], "train.epochs": SLICE["epochs"], "train.seed": 1},
                     track=False, progress=False).metrics
    assert book["epoch"] == SLICE["epochs"]
    assert 0.6 < book["test/acc"] < 0.9                   # it learned: 10 classes, chance is 0.1
    assert abs(book["test/acc"] - ours["test/acc"]) < 0.02
    assert abs(book["train/loss"] - ours["train/loss"]) < 0.03 * book["train/loss"]
    assert abs(book["train/acc"] - ours["train/acc"]) < 0.02


def test_run_seeds_reports_each_seed_and_their_spread(workspace):
    got = parity.run_seeds("mlp", [1, 2], limit=1000, epochs=1)
    assert got["seeds"] == [1, 2] and len(got["per_seed"]) == 2 and got["code"] == "d2lzh 1.0.0"
    accs = [m["test/acc"] for m in got["per_seed"]]
    assert accs[0] != accs[1]                                # the seed reaches the book's loop
    assert got["metrics"]["test/acc"] == pytest.approx(sum(accs) / 2)
    assert got["std"]["test/acc"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))


@pytest.mark.slow
def test_the_books_rnn_loops_run_on_the_same_text(workspace):
    indices, idx_to_char, char_to_idx = parity.corpus(mxlab.load_spec("rnn_scratch"))
    assert len(indices) == 10_000 and len(idx_to_char) == len(char_to_idx) > 500
    for key in ("rnn_scratch random", "rnn", "gru", "lstm"):
        got = parity.run_rnn(key, 1, epochs=2, at_epoch=2, limit=2000)
        assert got["epoch"] == 2 and 1 < got["train/ppl"] < 2 * len(idx_to_char)
    with pytest.raises(KeyError, match="no book code for 'custom_block'"):
        parity.run_image("custom_block", 1)


@pytest.mark.slow
def test_the_chapters_linear_loops_show_the_books_effects():
    assert parity.run_linear("linreg_scratch", 1)["train/loss"] < 1e-4        # the noise floor, 0.01**2 / 2
    assert parity.run_linear("linreg", 1)["train/loss"] < 1e-4
    for name in ("weight_decay_scratch", "weight_decay"):
        free, decayed = (parity.run_linear(f"{name} lambda={lam}", 1)["l2_norm_w"] for lam in (0, 3))
        assert free / decayed > 100, (name, free, decayed)
