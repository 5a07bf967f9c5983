"""Multilayer perceptrons (book chapters 3.9-3.10) and dropout (chapter 3.13), from scratch and with Gluon.

Dropout rates are options, one per hidden layer as in the book's experiment (p=0.2 after the first hidden
layer, 0.5 after the second): ``dropout1`` applies after the first hidden layer, ``dropout2`` after the second
and every later one. Separate float options let a study search each rate (every float model option whose name
holds "dropout" is in the default search space). A rate given for a hidden layer that does not exist is an
error rather than a silently unused option.
"""
from __future__ import annotations

from mxnet import autograd, nd
from mxnet.gluon import nn

from mxlab.models.scratch import ScratchNet
from mxlab.models.options import check_dropout
from mxlab.registry import models


def _check_options(num_hiddens: tuple[int, ...], dropout1: float, dropout2: float) -> list[float]:
    """The dropout rate after each hidden layer; bad options raise ValueError naming what is allowed."""
    num_hiddens = tuple(num_hiddens)
    if not num_hiddens or any(int(h) < 1 for h in num_hiddens):
        raise ValueError(f"model.num_hiddens: got {list(num_hiddens)}; allowed: a non-empty list of integers >= 1, "
                         f"e.g. [256] or [256, 256]")
    for key, rate in (("dropout1", dropout1), ("dropout2", dropout2)):
        check_dropout(key, rate)
    if dropout2 and len(num_hiddens) < 2:
        raise ValueError(f"model.dropout2: got {dropout2} but model.num_hiddens={list(num_hiddens)} has one hidden "
                         f"layer; allowed: dropout2=0 with one hidden layer, or two or more hidden layers")
    return [dropout1 if i == 0 else dropout2 for i in range(len(num_hiddens))]


def relu(X):
    """The book's ``relu``: ``nd.maximum(X, 0)``."""
    return nd.maximum(X, 0)


def dropout(X, drop_prob: float):
    """The book's ``dropout``: zero each element with probability ``drop_prob``, scale the rest by 1/(1-p)."""
    if not 0 <= drop_prob <= 1:
        raise ValueError(f"drop_prob: got {drop_prob}; allowed: a number in [0, 1]")
    keep_prob = 1 - drop_prob
    if keep_prob == 0:  # every element dropped
        return X.zeros_like()
    mask = nd.random.uniform(0, 1, X.shape, ctx=X.context) < keep_prob
    return mask * X / keep_prob


class MLPScratch(ScratchNet):
    """Hidden layers ``relu(X W + b)`` with dropout while training only, then a linear output layer."""

    def __init__(self, num_inputs: int, num_hiddens: tuple[int, ...], num_outputs: int, drop_probs: list[float]):
        super().__init__()
        self.num_inputs, self.drop_probs = num_inputs, drop_probs
        widths = [num_inputs, *num_hiddens, num_outputs]
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            self.declare(f"W{i}", (fan_in, fan_out), "normal", decay=True)
            self.declare(f"b{i}", (fan_out,), "zeros")
        self.num_layers = len(widths) - 1

    def forward(self, X):
        is_training = autograd.is_training()
        H = X.reshape((-1, self.num_inputs))
        for i in range(1, self.num_layers):
            H = relu(nd.dot(H, self.params[f"W{i}"]) + self.params[f"b{i}"])
            # Dropout only while training: evaluation sees the whole network (is_training is False there).
            if is_training and self.drop_probs[i - 1]:
                H = dropout(H, self.drop_probs[i - 1])
        n = self.num_layers
        return nd.dot(H, self.params[f"W{n}"]) + self.params[f"b{n}"]

    # No own ``loss``: the book's MLP sections use Gluon's SoftmaxCrossEntropyLoss (the classification default),
    # since a hand-written softmax then log is unstable at lr 0.5.


@models.register()
def mlp_scratch(*, num_inputs: int = 784, num_hiddens: tuple[int, ...] = (256,), num_outputs: int = 10,
                dropout1: float = 0.0, dropout2: float = 0.0) -> ScratchNet:
    """784-256-10 with hand-made N(0, 0.01^2) weights.

    ``num_hiddens: [256, 256]`` with ``dropout1: 0.2, dropout2: 0.5`` is the book's dropout network (3.13).
    """
    drop_probs = _check_options(num_hiddens, dropout1, dropout2)
    if num_inputs < 1 or num_outputs < 1:
        raise ValueError(f"model.num_inputs and model.num_outputs: got {num_inputs} and {num_outputs}; "
                         f"allowed: integers >= 1")
    return MLPScratch(num_inputs, tuple(num_hiddens), num_outputs, drop_probs)


@models.register()
def mlp(*, num_hiddens: tuple[int, ...] = (256,), num_outputs: int = 10, dropout1: float = 0.0,
        dropout2: float = 0.0):
    """``Dense(h, relu)`` per hidden layer (the first flattens the images), each followed by ``Dropout`` when its
    rate is > 0, then ``Dense(num_outputs)``; initialised by ``train.init`` (the book: normal)."""
    drop_probs = _check_options(num_hiddens, dropout1, dropout2)
    net = nn.HybridSequential()
    with net.name_scope():
        for width, rate in zip(num_hiddens, drop_probs):
            net.add(nn.Dense(int(width), activation="relu"))
            if rate:
                net.add(nn.Dropout(rate))
        net.add(nn.Dense(num_outputs))
    return net
