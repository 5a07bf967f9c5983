"""GoogLeNet (book chapter 5.9): five stages, three of them built from Inception blocks.

An Inception block runs four paths in parallel (1x1; 1x1 then 3x3; 1x1 then 5x5; 3x3 max pooling then 1x1)
and concatenates them on the channel axis. The block is a HybridBlock so the whole network hybridizes; its
layers and channel counts are the book's. The book trains it on 96x96 inputs; 32x32 is the smallest that
keeps every stage at least 1x1.
"""
from __future__ import annotations

from mxnet.gluon import nn

from mxlab.registry import models

# Per stage, the (c1, (c2a, c2b), (c3a, c3b), c4) output channels of each Inception block, as in the book.
INCEPTION_STAGES = (
    ((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64)),
    ((192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64), (128, (128, 256), (24, 64), 64),
     (112, (144, 288), (32, 64), 64), (256, (160, 320), (32, 128), 128)),
    ((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128)),
)


class Inception(nn.HybridBlock):
    """Four parallel paths; ``c1`` .. ``c4`` are their output channels (``c2``, ``c3`` are pairs)."""

    def __init__(self, c1, c2, c3, c4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.p1_1 = nn.Conv2D(c1, kernel_size=1, activation="relu")
            self.p2_1 = nn.Conv2D(c2[0], kernel_size=1, activation="relu")
            self.p2_2 = nn.Conv2D(c2[1], kernel_size=3, padding=1, activation="relu")
            self.p3_1 = nn.Conv2D(c3[0], kernel_size=1, activation="relu")
            self.p3_2 = nn.Conv2D(c3[1], kernel_size=5, padding=2, activation="relu")
            self.p4_1 = nn.MaxPool2D(pool_size=3, strides=1, padding=1)
            self.p4_2 = nn.Conv2D(c4, kernel_size=1, activation="relu")

    def hybrid_forward(self, F, x):
        p1 = self.p1_1(x)
        p2 = self.p2_2(self.p2_1(x))
        p3 = self.p3_2(self.p3_1(x))
        p4 = self.p4_2(self.p4_1(x))
        return F.concat(p1, p2, p3, p4, dim=1)  # the four paths side by side on the channel axis


@models.register()
def googlenet(*, num_classes: int = 10):
    net = nn.HybridSequential()
    with net.name_scope():
        b1 = nn.HybridSequential(prefix="b1_")
        b1.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3, activation="relu"),
               nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        b2 = nn.HybridSequential(prefix="b2_")
        b2.add(nn.Conv2D(64, kernel_size=1, activation="relu"),
               nn.Conv2D(192, kernel_size=3, padding=1, activation="relu"),
               nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        stages = []
        for i, blocks in enumerate(INCEPTION_STAGES, start=3):
            stage = nn.HybridSequential(prefix=f"b{i}_")
            with stage.name_scope():
                for c1, c2, c3, c4 in blocks:
                    stage.add(Inception(c1, c2, c3, c4))
                # Stages 3 and 4 halve the map; stage 5 ends with a global average instead.
                stage.add(nn.GlobalAvgPool2D() if i == 5 else nn.MaxPool2D(pool_size=3, strides=2, padding=1))
            stages.append(stage)
        net.add(b1, b2, *stages, nn.Dense(num_classes))
    return net
