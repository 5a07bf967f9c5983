"""The book's synthetic linear regression data: y = X w + b + noise, X ~ N(0, 1), seeded."""
from __future__ import annotations

import numpy as np

from mxlab.data.core import ArrayLoader, DataBundle, make_splits
from mxlab.registry import datasets


@datasets.register()
def synthetic_linear(data, ctx, seed: int, *, true_w: tuple[float, ...] = (2.0, -3.4), true_b: float = 4.2,
                     num_inputs: int | None = None, noise: float = 0.01, num_train: int = 1000,
                     num_test: int = 0) -> DataBundle:
    """``true_w`` of length 1 with ``num_inputs`` set fills every weight with that value (the book's 200-dim case).

    The first ``num_train`` draws train, the next ``num_test`` test; ``data.val_fraction`` and ``data.limit``
    follow the rule of :mod:`mxlab.data.core`.
    """
    if num_inputs is None:
        num_inputs = len(true_w)
    if len(true_w) not in (1, num_inputs):
        raise ValueError(f"data.true_w has {len(true_w)} values; allowed: 1 or num_inputs={num_inputs}")
    if num_train < 1 or num_test < 0:
        raise ValueError(f"data.num_train must be >= 1 and data.num_test >= 0, got {num_train} and {num_test}")
    w = np.broadcast_to(np.asarray(true_w, dtype=np.float64), (num_inputs,))
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(num_train + num_test, num_inputs))
    y = X @ w + true_b + rng.normal(scale=noise, size=len(X))
    X, y = X.astype(np.float32), y.astype(np.float32)
    test = (X[num_train:], y[num_train:]) if num_test else None
    train, val, test = make_splits(data, seed, (X[:num_train], y[:num_train]), test)
    bs = data.batch_size
    return DataBundle(
        train=ArrayLoader(*train, bs, ctx, shuffle=True),
        val=ArrayLoader(*val, bs, ctx, shuffle=False) if val else None,
        test=ArrayLoader(*test, bs, ctx, shuffle=False) if test else None,
        input_shape=(num_inputs,),
        extra={"true_w": w.tolist(), "true_b": true_b},
    )
