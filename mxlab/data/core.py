"""What the datasets share: the split rule and device-resident batching.

The split rule, the same for every dataset (:func:`make_splits`):

1. ``data.val_fraction`` holds out ``max(1, round(n * val_fraction))`` of the *full* training split (none at
   0): a seeded permutation of the examples, or the tail of a text (so validation continues where training
   stops). The test split is never touched.
2. ``data.limit`` then caps each split -- train, val, test -- to its first ``limit`` examples (characters for
   a corpus).

With ``val_fraction: 0`` and no limit (the book's settings) every dataset is exactly its full data.

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
        self.steps: Optional[int] = None   # a shard's batch count, the same on every worker

    def __len__(self) -> int:
        return len(self._sizes())

    def _sizes(self) -> list[int]:
        """Each batch's size: full batches, then the remainder; a shard balances its last two batches instead,
        or splits its last one in two, so that it takes ``steps`` steps with no batch under half a batch."""
        b = self.batch_size
        sizes = [b] * (self.num_examples // b) + ([self.num_examples % b] if self.num_examples % b else [])
        if self.steps is None:
            return sizes
        if len(sizes) < self.steps:   # one short: the shard's size is a multiple of the batch
            last = sizes.pop()
            sizes += [last - last // 2, last // 2]
        elif len(sizes) >= 2 and sizes[-1] < b:
            both = sizes.pop() + sizes.pop()
            sizes += [both - both // 2, both // 2]
        return sizes[:self.steps]

    def shard(self, rank: int, workers: int) -> "ArrayLoader":
        """Examples ``rank``, ``rank + workers``, ...: disjoint shards that together hold every example.

        Synchronous workers must step together, so every shard takes ``ceil(ceil(n / workers) / batch_size)``
        steps and every example is used each epoch. The one exception is a batch size of 1 when ``workers``
        does not divide ``n``: the larger shards then leave out one example each epoch (a different one each
        epoch, after the shuffle).
        """
        X, y = self.X.asnumpy()[rank::workers], self.y.asnumpy()[rank::workers]
        part = ArrayLoader(X, y, self.batch_size, self.ctx, self.shuffle, self.transform)
        largest = -(-self.num_examples // workers)   # ceil(n / workers) examples
        part.steps = min(-(-largest // self.batch_size), self.num_examples // workers)   # batch 1: the smallest's
        return part

    def __iter__(self) -> Iterator:
        mx = import_mxnet()
        index = mx.nd.arange(self.num_examples, ctx=self.ctx)
        if self.shuffle:
            index = mx.nd.random.shuffle(index)
        start = 0
        for size in self._sizes():
            batch = index[start:start + size]
            start += size
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


def val_size(n: int, val_fraction: float) -> int:
    """How many of ``n`` training examples the rule holds out: none at 0, else at least one."""
    return max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0


def hold_out(X: np.ndarray, y: np.ndarray, val_fraction: float, seed: int):
    """Split off a seeded ``val_fraction`` of (X, y): returns (X_train, y_train, X_val, y_val)."""
    n_val = val_size(len(X), val_fraction)
    if not n_val:
        return X, y, None, None
    order = np.random.RandomState(seed).permutation(len(X))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return X[train], y[train], X[val], y[val]


Split = Optional[tuple]     # parallel sequences of one split, (X, y) or (text,); None when absent


def make_splits(data, seed: int, train: tuple, test: Split = None, tail: bool = False) -> tuple[tuple, Split, Split]:
    """(train, val, test) by the module's rule, with ``data.val_fraction`` and ``data.limit`` of the spec.

    ``tail`` holds out the end of an ordered sequence (a text) instead of a seeded sample of examples.
    """
    if tail:
        n = len(train[0])
        cut = n - val_size(n, data.val_fraction)
        val = tuple(part[cut:] for part in train) if cut < n else None
        train = tuple(part[:cut] for part in train)
    else:
        X, y, X_val, y_val = hold_out(*train, data.val_fraction, seed)
        train, val = (X, y), ((X_val, y_val) if X_val is not None else None)

    def cap(split: Split) -> Split:
        return split if split is None or not data.limit else tuple(part[:data.limit] for part in split)

    return cap(train), cap(val), cap(test)


def load_data(spec, ctx, shard: tuple[int, int] = (0, 1)) -> DataBundle:
    """Build the dataset of ``spec.data`` with its batches on ``ctx`` (the first training context).

    ``shard=(rank, workers)``: a worker of a distributed job trains its own shard of the training split
    (:meth:`ArrayLoader.shard`); validation and test stay whole, every worker holding the same network.
    """
    bundle = datasets.get(spec.data.name)(spec.data, ctx, spec.train.seed, **spec.data.options)
    rank, workers = shard
    if workers > 1:
        split = getattr(bundle.train, "shard", None)
        if split is None:
            raise DataError(f"data.name={spec.data.name}: its training split cannot be sharded across workers yet; "
                            f"allowed with mxlab launch: datasets of examples (fashion_mnist, synthetic_linear)")
        if bundle.train.num_examples < workers:
            raise DataError(f"the training split has {bundle.train.num_examples} example(s) for {workers} workers; "
                            f"allowed: data.limit of at least {workers}, or fewer workers")
        bundle.train = split(rank, workers)
    return bundle
