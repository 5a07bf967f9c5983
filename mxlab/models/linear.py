"""Linear regression and softmax regression, from scratch and with Gluon (book chapter 3)."""
from __future__ import annotations

from mxlab.devices import import_mxnet
from mxlab.models.scratch import ScratchNet
from mxlab.registry import models


class LinearRegressionScratch(ScratchNet):
    def __init__(self, num_inputs: int):
        super().__init__()
        self.declare("w", (num_inputs, 1), "normal", decay=True)
        self.declare("b", (1,), "zeros")

    def forward(self, X):
        return import_mxnet().nd.dot(X, self.params["w"]) + self.params["b"]


@models.register()
def linreg_scratch(*, num_inputs: int = 2) -> ScratchNet:
    """y_hat = X w + b with hand-made parameters; the loss is the task's squared loss."""
    return LinearRegressionScratch(num_inputs)


@models.register()
def linreg(*, num_outputs: int = 1):
    """``nn.Dense(1)``: the input width is inferred from the first batch."""
    net = import_mxnet().gluon.nn.HybridSequential()
    net.add(import_mxnet().gluon.nn.Dense(num_outputs))
    return net


class SoftmaxRegressionScratch(ScratchNet):
    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__()
        self.declare("W", (num_inputs, num_outputs), "normal", decay=True)
        self.declare("b", (num_outputs,), "zeros")

    def forward(self, X):
        nd = import_mxnet().nd
        return softmax_rows(nd.dot(X.reshape((-1, self.params["W"].shape[0])), self.params["W"]) + self.params["b"])

    @staticmethod
    def loss(y_hat, y):
        """The book's ``cross_entropy``: -log of the probability given to the true class."""
        return -import_mxnet().nd.pick(y_hat, y).log()


def softmax_rows(X):
    """The book's softmax, written out: exp, then divide by the row sums."""
    X_exp = X.exp()
    return X_exp / X_exp.sum(axis=1, keepdims=True)


@models.register()
def softmax_scratch(*, num_inputs: int = 784, num_outputs: int = 10) -> ScratchNet:
    return SoftmaxRegressionScratch(num_inputs, num_outputs)


@models.register()
def softmax(*, num_outputs: int = 10):
    """``Flatten`` + ``Dense(10)``; Gluon's cross-entropy applies the softmax inside the loss, stably."""
    nn = import_mxnet().gluon.nn
    net = nn.HybridSequential()
    net.add(nn.Flatten(), nn.Dense(num_outputs))
    return net
