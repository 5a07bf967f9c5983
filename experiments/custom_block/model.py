"""The book's model-construction chapter (4.1-4.5) in one trainable network, registered as ``custom_mlp``.

An experiment folder may define its own model: the runner imports this file before it reads the spec, so
``model: {name: custom_mlp}`` in experiment.yaml finds the builder registered below. Keyword-only, annotated
options of the builder become the allowed ``model.<option>`` keys.

What each part shows:
- :class:`CustomMLP`: a ``Block`` subclass that declares its layers in ``__init__`` and writes ``forward``.
- :class:`MyDense`: a custom layer whose parameters come from ``self.params.get``.
- :class:`HandXavier`: a custom ``init.Initializer`` that overrides ``_init_weight``.
- deferred initialisation: the hidden ``nn.Dense`` is built without ``in_units``; its weight's shape, and so
  its initialisation, waits for the first batch (``HandXavier.drawn`` records when each weight was drawn).
- ``save_parameters`` / ``load_parameters`` round trip: asserted in tests/test_book_checks.py.

Every weight carries its own HandXavier initializer, so ``train.init`` does not apply to this model.
"""
from __future__ import annotations

import math

from mxlab.devices import import_mxnet
from mxlab.registry import models

mx = import_mxnet()   # through mxlab, which loads the CUDA libraries first on a GPU build
nn = mx.gluon.nn


class HandXavier(mx.init.Initializer):
    """Xavier's uniform init written by hand: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).

    The bound is symmetric in the two dimensions, so it serves both ``nn.Dense`` (units, in_units) and
    :class:`MyDense` (in_units, units) weights.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drawn: list[tuple[str, tuple]] = []   # (name, shape) in the order the weights were initialised

    def _init_weight(self, name, data):
        if data.ndim != 2:
            raise ValueError(f"HandXavier: weight {name} has shape {data.shape}; allowed: 2-D dense weights")
        bound = math.sqrt(6.0 / (data.shape[0] + data.shape[1]))
        data[:] = mx.nd.random.uniform(-bound, bound, shape=data.shape, ctx=data.context)
        self.drawn.append((str(name), tuple(data.shape)))


class MyDense(nn.Block):
    """``relu(X W + b)`` (or without the relu) with ``W``, ``b`` declared through ``self.params.get``."""

    def __init__(self, units: int, in_units: int, relu: bool, weight_init, **kwargs):
        super().__init__(**kwargs)
        self.relu = relu
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(in_units, units), init=weight_init)
            self.bias = self.params.get("bias", shape=(units,), init=mx.init.Zero())

    def forward(self, X):
        ctx = X.context   # one copy of each parameter per training device
        linear = mx.nd.dot(X, self.weight.data(ctx)) + self.bias.data(ctx)
        return mx.nd.relu(linear) if self.relu else linear


class CustomMLP(nn.Block):
    """Flatten, a built-in hidden ``Dense`` (input width inferred), then the hand-written output layer."""

    def __init__(self, num_hiddens: int, num_outputs: int, **kwargs):
        super().__init__(**kwargs)
        self.weight_init = HandXavier()
        with self.name_scope():
            # No in_units: the weight is (num_hiddens, 0) until the first batch fixes the input width.
            self.hidden = nn.Dense(num_hiddens, activation="relu", weight_initializer=self.weight_init)
            self.output = MyDense(num_outputs, in_units=num_hiddens, relu=False, weight_init=self.weight_init)

    def forward(self, X):
        return self.output(self.hidden(X.reshape((X.shape[0], -1))))


@models.register()
def custom_mlp(*, num_hiddens: int = 256, num_outputs: int = 10) -> CustomMLP:
    if num_hiddens < 1 or num_outputs < 1:
        raise ValueError(f"model.num_hiddens and model.num_outputs: got {num_hiddens} and {num_outputs}; "
                         f"allowed: integers >= 1")
    return CustomMLP(num_hiddens, num_outputs)
