"""LeNet (book chapter 5.5): two convolution blocks with sigmoid and max pooling, three dense layers."""
from __future__ import annotations

from typing import Literal

from mxnet.gluon import nn

from mxlab.registry import models


@models.register()
def lenet(*, activation: Literal["sigmoid", "relu"] = "sigmoid", num_classes: int = 10):
    net = nn.HybridSequential()
    net.add(
        nn.Conv2D(channels=6, kernel_size=5, activation=activation),
        nn.MaxPool2D(pool_size=2, strides=2),
        nn.Conv2D(channels=16, kernel_size=5, activation=activation),
        nn.MaxPool2D(pool_size=2, strides=2),
        nn.Dense(120, activation=activation),
        nn.Dense(84, activation=activation),
        nn.Dense(num_classes),
    )
    return net
