"""VGG (book chapter 5.7): blocks of 3x3 convolutions each ended by a 2x2 max pooling, then three dense layers.

The book trains VGG-11 with every convolution's channel count divided by 4 (its ``ratio``) so that it fits
Fashion-MNIST on one GPU; ``channel_divisor`` is that ratio. The dense layers keep 4096 units, as in the book.
Five poolings halve the input five times: it needs at least 32x32 (the book uses 224).
"""
from __future__ import annotations

from typing import Literal

from mxnet.gluon import nn

from mxlab.models.options import check_dropout
from mxlab.registry import models

# depth -> conv_arch, the book's ((num_convs, num_channels), ...) per block; VGG-11 is the book's.
VGG_SPECS = {
    11: ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    13: ((2, 64), (2, 128), (2, 256), (2, 512), (2, 512)),
    16: ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    19: ((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)),
}


def vgg_block(num_convs: int, num_channels: int):
    blk = nn.HybridSequential(prefix="")
    for _ in range(num_convs):
        blk.add(nn.Conv2D(num_channels, kernel_size=3, padding=1, activation="relu"))
    blk.add(nn.MaxPool2D(pool_size=2, strides=2))
    return blk


def build_vgg(conv_arch, channel_divisor: int, dropout: float, num_classes: int):
    net = nn.HybridSequential()
    with net.name_scope():
        for num_convs, num_channels in conv_arch:
            net.add(vgg_block(num_convs, num_channels // channel_divisor))
        net.add(nn.Dense(4096, activation="relu"), nn.Dropout(dropout),
                nn.Dense(4096, activation="relu"), nn.Dropout(dropout),
                nn.Dense(num_classes))
    return net


@models.register()
def vgg(*, depth: Literal[11, 13, 16, 19] = 11, channel_divisor: int = 4, dropout: float = 0.5,
        num_classes: int = 10):
    """VGG-``depth`` from :data:`VGG_SPECS`, convolution channels divided by ``channel_divisor``."""
    if depth not in VGG_SPECS:
        raise ValueError(f"model.depth: got {depth}; allowed: {', '.join(map(str, VGG_SPECS))}")
    if channel_divisor not in (1, 2, 4, 8, 16, 32, 64):
        raise ValueError(f"model.channel_divisor: got {channel_divisor}; allowed: a power of two from 1 to 64 "
                         f"(64 channels / 64 still leaves one)")
    check_dropout("dropout", dropout)
    return build_vgg(VGG_SPECS[depth], channel_divisor, dropout, num_classes)


# Thin builders, one per row of the table: ``model: {name: vgg16}`` instead of ``{name: vgg, depth: 16}``.
for _depth in VGG_SPECS:
    models.register(f"vgg{_depth}", depth=_depth)(vgg)
