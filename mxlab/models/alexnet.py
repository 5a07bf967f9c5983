"""AlexNet (book chapter 5.6) for 1-channel Fashion-MNIST resized to 224.

Five convolutions and three dense layers as in the book; the input channel count is inferred from the first
batch, so grey images need no change. Needs inputs of at least 67x67 (three 3x3/2 poolings after an 11x11/4
convolution); the book uses 224.
"""
from __future__ import annotations

from mxnet.gluon import nn

from mxlab.models.options import check_dropout
from mxlab.registry import models


@models.register()
def alexnet(*, dropout: float = 0.5, num_classes: int = 10):
    """The book's AlexNet: dropout ``dropout`` after each 4096-wide dense layer."""
    check_dropout("dropout", dropout)
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(
            # A large 11x11 window with stride 4 shrinks the 224 input quickly.
            nn.Conv2D(96, kernel_size=11, strides=4, activation="relu"),
            nn.MaxPool2D(pool_size=3, strides=2),
            nn.Conv2D(256, kernel_size=5, padding=2, activation="relu"),
            nn.MaxPool2D(pool_size=3, strides=2),
            nn.Conv2D(384, kernel_size=3, padding=1, activation="relu"),
            nn.Conv2D(384, kernel_size=3, padding=1, activation="relu"),
            nn.Conv2D(256, kernel_size=3, padding=1, activation="relu"),
            nn.MaxPool2D(pool_size=3, strides=2),
            nn.Dense(4096, activation="relu"), nn.Dropout(dropout),
            nn.Dense(4096, activation="relu"), nn.Dropout(dropout),
            nn.Dense(num_classes),
        )
    return net
