"""Device-resident batching shared by the datasets.

A split is copied to the training device once, in its stored dtype (uint8 images stay uint8). Each epoch
shuffles an index on the device and takes batches with it; the per-batch transform (scale to [0, 1], resize,
normalise) runs there too, on the whole batch. Nothing in the hot path runs Python per example.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from mxlab.devices import import_mxnet
from mxlab.registry import datasets


class DataError(RuntimeError):
    """Data that cannot be found, verified or read; the message says how to provide it."""


class ArrayLoader:
    """Batches of (X, y) from two arrays held on ``ctx``, shuffled by an on-device index each epoch."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, ctx, shuffle: bool,
                 transform: Optional[Callable] = None):
        mx = import_mxnet()
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} examples but y has {len(y)}")
        self.X = mx.nd.array(X, ctx=ctx, dtype=X.dtype)
        self.y = mx.nd.array(y, ctx=ctx, dtype=np.float32)
        self.batch_size, self.ctx, self.shuffle, self.transform = batch_size, ctx, shuffle, transform
        self.num_examples = len(X)

    def __len__(self) -> int:
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator:
        mx = import_mxnet()
        index = mx.nd.arange(self.num_examples, ctx=self.ctx)
        if self.shuffle:
            index = mx.nd.random.shuffle(index)
        for start in range(0, self.num_examples, self.batch_size):
            batch = index[start:start + self.batch_size]
            X = mx.nd.take(self.X, batch)
            yield (self.transform(X) if self.transform else X), mx.nd.take(self.y, batch)


@dataclass
class DataBundle:
    """What a dataset builder returns: loaders per split, and facts the tracker records."""

    train: Any
    test: Any = None
    val: Any = None
    input_shape: tuple = ()           # one example's shape after the transform, for summaries and exports
    checksums: dict = field(default_factory=dict)   # file name -> SHA-256 of the content used
    extra: dict = field(default_factory=dict)       # dataset-specific facts a model or task may need (vocab)

    def splits(self) -> dict:
        return {name: loader for name, loader in (("train", self.train), ("val", self.val), ("test", self.test))
                if loader is not None}


def hold_out(X: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Split off a seeded ``val_fraction`` of (X, y): returns (X_train, y_train, X_val, y_val)."""
    if val_fraction <= 0:
        return X, y, None, None
    order = np.random.RandomState(seed).permutation(len(X))
    n_val = max(1, int(round(len(X) * val_fraction)))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return X[train], y[train], X[val], y[val]


def load_data(spec, ctx) -> DataBundle:
    """Build the dataset of ``spec.data`` with its batches on ``ctx`` (the first training context)."""
    return datasets.get(spec.data.name)(spec.data, ctx, spec.train.seed, **spec.data.options)
