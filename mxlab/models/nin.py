"""Network in network (book chapter 5.8): NiN blocks (a convolution then two 1x1 convolutions acting as
per-pixel dense layers), no dense layer at the end but a block with one channel per class and global average
pooling. Needs inputs of at least 67x67, like AlexNet; the book uses 224.
"""
from __future__ import annotations

from mxnet.gluon import nn

from mxlab.models.options import check_dropout
from mxlab.registry import models


def nin_block(num_channels: int, kernel_size: int, strides: int, padding: int):
    blk = nn.HybridSequential(prefix="")
    blk.add(nn.Conv2D(num_channels, kernel_size, strides, padding, activation="relu"),
            nn.Conv2D(num_channels, kernel_size=1, activation="relu"),
            nn.Conv2D(num_channels, kernel_size=1, activation="relu"))
    return blk


@models.register()
def nin(*, dropout: float = 0.5, num_classes: int = 10):
    check_dropout("dropout", dropout)
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nin_block(96, kernel_size=11, strides=4, padding=0),
                nn.MaxPool2D(pool_size=3, strides=2),
                nin_block(256, kernel_size=5, strides=1, padding=2),
                nn.MaxPool2D(pool_size=3, strides=2),
                nin_block(384, kernel_size=3, strides=1, padding=1),
                nn.MaxPool2D(pool_size=3, strides=2), nn.Dropout(dropout),
                # One output channel per class, averaged over the whole map: no dense layer.
                nin_block(num_classes, kernel_size=3, strides=1, padding=1),
                nn.GlobalAvgPool2D(),
                nn.Flatten())
    return net
