"""DenseNet (book chapter 5.12): dense blocks concatenate each convolution's output to its input, and
transition blocks (1x1 convolution + 2x2 average pooling) halve the channels and the map between them.

The book's network: a 7x7 stem with 64 channels, growth rate 32, four dense blocks of 4 convolutions, and a
transition after every block but the last. The book trains on 96x96; 32x32 keeps every map >= 1x1.
"""
from __future__ import annotations

from mxnet.gluon import nn

from mxlab.registry import models


def conv_block(num_channels: int):
    """Batch norm, relu, 3x3 convolution: the "pre-activation" order the book uses."""
    blk = nn.HybridSequential(prefix="")
    blk.add(nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(num_channels, kernel_size=3, padding=1))
    return blk


class DenseBlock(nn.HybridBlock):
    """``num_convs`` conv blocks; each sees the concatenation of the block's input and all earlier outputs."""

    def __init__(self, num_convs: int, num_channels: int, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.net = nn.HybridSequential(prefix="")
            for _ in range(num_convs):
                self.net.add(conv_block(num_channels))

    def hybrid_forward(self, F, X):
        for blk in self.net:
            Y = blk(X)
            X = F.concat(X, Y, dim=1)  # channels grow by num_channels per conv block
        return X


def transition_block(num_channels: int):
    blk = nn.HybridSequential(prefix="")
    blk.add(nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(num_channels, kernel_size=1),
            nn.AvgPool2D(pool_size=2, strides=2))
    return blk


@models.register()
def densenet(*, growth_rate: int = 32, num_convs: tuple[int, ...] = (4, 4, 4, 4), num_channels: int = 64,
             num_classes: int = 10):
    """DenseNet with ``len(num_convs)`` dense blocks; ``num_channels`` is the stem's width."""
    num_convs = tuple(num_convs)
    if growth_rate < 1:
        raise ValueError(f"model.growth_rate: got {growth_rate}; allowed: an integer >= 1")
    if not num_convs or any(n < 1 for n in num_convs):
        raise ValueError(f"model.num_convs: got {list(num_convs)}; allowed: a non-empty list of integers >= 1, "
                         f"one per dense block, e.g. [4, 4, 4, 4]")
    if num_channels < 2:
        raise ValueError(f"model.num_channels: got {num_channels}; allowed: an integer >= 2")
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(num_channels, kernel_size=7, strides=2, padding=3), nn.BatchNorm(),
                nn.Activation("relu"), nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        channels = num_channels
        for i, convs in enumerate(num_convs):
            net.add(DenseBlock(convs, growth_rate, prefix=f"dense{i + 1}_"))
            channels += convs * growth_rate
            if i != len(num_convs) - 1:
                channels //= 2  # the transition halves the channels as well as the map
                net.add(transition_block(channels))
        net.add(nn.BatchNorm(), nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Dense(num_classes))
    return net
