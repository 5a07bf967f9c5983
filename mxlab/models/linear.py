"""Linear regression and softmax regression, from scratch and with Gluon (book chapter 3)."""
from __future__ import annotations

from mxnet import init, nd
from mxnet.gluon import nn

from mxlab.models.scratch import ScratchNet
from mxlab.registry import models


class LinearRegressionScratch(ScratchNet):
    def __init__(self, num_inputs: int, init_sigma: float | None = None):
        super().__init__()
        self.init_sigma = init_sigma
        self.declare("w", (num_inputs, 1), "normal", decay=True)
        self.declare("b", (1,), "zeros")

    def initialize(self, ctx=None, **kwargs) -> None:
        super().initialize(ctx, **kwargs)
        if self.init_sigma is not None:
            # The weight-decay chapter starts from w ~ N(0, 1), not the usual N(0, 0.01^2).
            w = nd.random.normal(scale=self.init_sigma, shape=self.params["w"].shape, ctx=self.ctx)
            w.attach_grad()
            self.params["w"] = w

    def forward(self, X):
        return nd.dot(X, self.params["w"]) + self.params["b"]

    def epoch_metrics(self) -> dict[str, float]:
        """The weight-decay chapter's measure: the L2 norm of w (the bias is not decayed)."""
        return {"l2_norm_w": float(self.params["w"].norm().asscalar())}


def _check_sigma(init_sigma: float | None) -> None:
    if init_sigma is not None and init_sigma <= 0:
        raise ValueError(f"model.init_sigma: got {init_sigma}; allowed: null (the default init) or a number > 0")


@models.register()
def linreg_scratch(*, num_inputs: int = 2, init_sigma: float | None = None) -> ScratchNet:
    """y_hat = X w + b with hand-made parameters; the loss is the task's squared loss.

    ``init_sigma`` draws w from N(0, init_sigma^2) instead of N(0, 0.01^2) (the weight-decay chapter uses 1).
    """
    _check_sigma(init_sigma)
    return LinearRegressionScratch(num_inputs, init_sigma)


class LinearRegression(nn.HybridSequential):
    """``nn.Dense`` in a Sequential that also reports the L2 norm of its weight after each epoch."""

    def epoch_metrics(self) -> dict[str, float]:
        return {"l2_norm_w": float(self[0].weight.data().norm().asscalar())}


@models.register()
def linreg(*, num_outputs: int = 1, init_sigma: float | None = None):
    """``nn.Dense(1)``: the input width is inferred from the first batch.

    ``init_sigma`` draws the weight from N(0, init_sigma^2) instead of ``train.init`` (the weight-decay chapter
    uses 1); the bias starts at 0 either way.
    """
    _check_sigma(init_sigma)
    net = LinearRegression(prefix="linreg_")
    weight_init = init.Normal(init_sigma) if init_sigma is not None else None
    with net.name_scope():
        net.add(nn.Dense(num_outputs, weight_initializer=weight_init))
    return net


class SoftmaxRegressionScratch(ScratchNet):
    def __init__(self, num_inputs: int, num_outputs: int):
        super().__init__()
        self.declare("W", (num_inputs, num_outputs), "normal", decay=True)
        self.declare("b", (num_outputs,), "zeros")

    def forward(self, X):
        return softmax_rows(nd.dot(X.reshape((-1, self.params["W"].shape[0])), self.params["W"]) + self.params["b"])

    @staticmethod
    def loss(y_hat, y):
        """The book's ``cross_entropy``: -log of the probability given to the true class."""
        return -nd.pick(y_hat, y).log()


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
    net = nn.HybridSequential()
    net.add(nn.Flatten(), nn.Dense(num_outputs))
    return net
