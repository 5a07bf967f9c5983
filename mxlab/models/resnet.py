"""ResNet (book chapter 5.11): residual blocks, a 1x1 convolution on the shortcut where the shape changes.

The book builds ResNet-18 (four stages of two residual blocks); the table also holds ResNet-34's stage sizes.
Every stage after the first halves height and width and doubles the channels, which is where the shortcut
needs its 1x1 convolution with stride 2. The book trains on 96x96; 32x32 is enough to keep every map >= 1x1.
"""
from __future__ import annotations

from typing import Literal

from mxnet.gluon import nn

from mxlab.registry import models

# depth -> residual blocks per stage (channels 64, 128, 256, 512).
RESNET_SPECS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)


class Residual(nn.HybridBlock):
    """Two 3x3 convolutions with batch norm; the input is added back before the last relu."""

    def __init__(self, num_channels: int, use_1x1conv: bool = False, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1, strides=strides)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
            # Without it the sum X + Y would not match when channels or size change.
            self.conv3 = nn.Conv2D(num_channels, kernel_size=1, strides=strides) if use_1x1conv else None
            self.bn1 = nn.BatchNorm()
            self.bn2 = nn.BatchNorm()

    def hybrid_forward(self, F, X):
        Y = F.relu(self.bn1(self.conv1(X)))
        Y = self.bn2(self.conv2(Y))
        if self.conv3 is not None:
            X = self.conv3(X)
        return F.relu(Y + X)


def resnet_block(num_channels: int, num_residuals: int, first_block: bool = False, prefix: str = ""):
    blk = nn.HybridSequential(prefix=prefix)
    with blk.name_scope():
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                blk.add(Residual(num_channels))
    return blk


@models.register()
def resnet(*, depth: Literal[18, 34] = 18, num_classes: int = 10):
    """ResNet-``depth`` from :data:`RESNET_SPECS`; 18 is the book's."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"model.depth: got {depth}; allowed: {', '.join(map(str, RESNET_SPECS))}")
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3), nn.BatchNorm(), nn.Activation("relu"),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        for i, (channels, count) in enumerate(zip(STAGE_CHANNELS, RESNET_SPECS[depth])):
            # The first stage follows a max pooling that already halved the map: no shortcut convolution.
            net.add(resnet_block(channels, count, first_block=(i == 0), prefix=f"stage{i + 1}_"))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(num_classes))
    return net


# Thin builders, one per row of the table.
for _depth in RESNET_SPECS:
    models.register(f"resnet{_depth}", depth=_depth)(resnet)
