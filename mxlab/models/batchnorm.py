"""Batch normalisation (book chapter 5.10): written from scratch, and BN-LeNet with it or with Gluon's.

The scratch layer is the book's ``batch_norm`` inside a Block: in training mode (``autograd.is_training()``,
true under ``autograd.record()``) it normalises with the batch's mean and variance (per feature for dense
outputs, per channel over batch, height and width for convolution outputs) and updates the moving averages;
in inference mode it uses the moving averages. It is an ``nn.Block``, not a HybridBlock: the Python branch on
the mode and the moving-average update are imperative, so ``batchnorm_scratch`` runs unhybridized, as the
book's does.

Two choices differ from the book's listing, both to match Gluon's ``nn.BatchNorm`` (so the twins agree):
the moving averages are Parameters with ``grad_req='null'`` (saved with ``save_parameters``, one copy per
device) rather than loose NDArrays, and the moving variance starts at 1 rather than 0 (a variance of 0 would
divide by sqrt(eps) if the network were evaluated before any training step).
"""
from __future__ import annotations

from typing import Literal

from mxnet import autograd, init, nd
from mxnet.gluon import nn

from mxlab.registry import models


def batch_norm(X, gamma, beta, moving_mean, moving_var, eps: float, momentum: float):
    """The book's ``batch_norm``: returns ``(Y, new_moving_mean, new_moving_var)``."""
    if not autograd.is_training():
        X_hat = (X - moving_mean) / nd.sqrt(moving_var + eps)
        return gamma * X_hat + beta, moving_mean, moving_var
    if X.ndim not in (2, 4):
        raise ValueError(f"batch_norm: input has shape {X.shape}; allowed: 2 axes (batch, features) "
                         f"or 4 (batch, channels, height, width)")
    axes = 0 if X.ndim == 2 else (0, 2, 3)
    mean = X.mean(axis=axes, keepdims=True)
    var = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
    X_hat = (X - mean) / nd.sqrt(var + eps)
    # The averages are statistics, not part of the model's function: keep them out of the gradient graph.
    moving_mean = momentum * moving_mean + (1.0 - momentum) * mean.detach()
    moving_var = momentum * moving_var + (1.0 - momentum) * var.detach()
    return gamma * X_hat + beta, moving_mean, moving_var


class BatchNorm(nn.Block):
    """Scratch batch norm over ``num_features`` features (``num_dims=2``) or channels (``num_dims=4``)."""

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if num_dims not in (2, 4):
            raise ValueError(f"BatchNorm num_dims: got {num_dims}; allowed: 2 (after Dense) or 4 (after Conv2D)")
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.eps, self.momentum = eps, momentum
        with self.name_scope():
            self.gamma = self.params.get("gamma", shape=shape, init=init.One())
            self.beta = self.params.get("beta", shape=shape, init=init.Zero())
            self.moving_mean = self.params.get("moving_mean", shape=shape, init=init.Zero(),
                                               grad_req="null", differentiable=False)
            self.moving_var = self.params.get("moving_var", shape=shape, init=init.One(),
                                              grad_req="null", differentiable=False)

    def forward(self, X):
        ctx = X.context
        moving_mean, moving_var = self.moving_mean.data(ctx), self.moving_var.data(ctx)
        Y, new_mean, new_var = batch_norm(X, self.gamma.data(ctx), self.beta.data(ctx), moving_mean,
                                          moving_var, self.eps, self.momentum)
        if new_mean is not moving_mean:
            # Written in place into this device's copy, so every device keeps its own running statistics.
            moving_mean[:] = new_mean
            moving_var[:] = new_var
        return Y


def bn_lenet(norm: Literal["scratch", "gluon"], num_classes: int = 10):
    """The book's BN-LeNet: batch norm after each convolution and dense layer, before the sigmoid."""
    if norm == "scratch":
        net = nn.Sequential()   # a plain Block: the scratch layer cannot be hybridized
        layer = BatchNorm
    else:
        net = nn.HybridSequential()
        layer = lambda num_features, num_dims: nn.BatchNorm()  # noqa: E731  (Gluon infers the width)
    with net.name_scope():
        net.add(nn.Conv2D(6, kernel_size=5), layer(6, num_dims=4), nn.Activation("sigmoid"),
                nn.MaxPool2D(pool_size=2, strides=2),
                nn.Conv2D(16, kernel_size=5), layer(16, num_dims=4), nn.Activation("sigmoid"),
                nn.MaxPool2D(pool_size=2, strides=2),
                nn.Dense(120), layer(120, num_dims=2), nn.Activation("sigmoid"),
                nn.Dense(84), layer(84, num_dims=2), nn.Activation("sigmoid"),
                nn.Dense(num_classes))
    return net


@models.register()
def batchnorm_scratch(*, num_classes: int = 10):
    """BN-LeNet with the scratch :class:`BatchNorm` layer."""
    return bn_lenet("scratch", num_classes)


@models.register()
def batchnorm(*, num_classes: int = 10):
    """BN-LeNet with Gluon's ``nn.BatchNorm``."""
    return bn_lenet("gluon", num_classes)
