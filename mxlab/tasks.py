"""What differs between tasks: the loss, the per-batch statistics kept on the device, and the epoch metrics.

The fit loop calls these hooks and nothing else, so adding a task never adds a branch to the loop.
A model may bring its own loss (``net.loss``), as the book's from-scratch models do.
"""
from __future__ import annotations

import math

from mxlab.devices import import_mxnet
from mxlab.registry import Registry

tasks = Registry("task")


class Task:
    """Classification is the base case: cross-entropy, accuracy."""

    metric_names = ("loss", "acc")
    # What a study optimises unless the spec says otherwise: a validation metric, never the test set.
    default_metric = "val/acc"
    higher_is_better = ("acc",)

    def direction(self, metric: str) -> str:
        """Which way ``metric`` (``val/acc``) improves: accuracy up, losses and perplexity down."""
        return "maximize" if metric.rpartition("/")[2] in self.higher_is_better else "minimize"

    def loss(self, net):
        own = getattr(net, "loss", None)
        if own is not None:
            return own
        return self.default_loss()

    def default_loss(self):
        return import_mxnet().gluon.loss.SoftmaxCrossEntropyLoss()

    def begin_pass(self, net, loader, ctx):
        """Per-context state carried from batch to batch within one pass over a split (None: nothing)."""
        return None

    def forward(self, net, X, carry):
        """``(y_hat, carry)`` for one batch on one context."""
        return net(X), carry

    def count(self, y) -> int:
        """How many examples a batch of labels holds: the unit of the loss average and of throughput."""
        return y.shape[0]

    def stats(self, y_hat, y, loss):
        """Sums kept on the device for one batch: one NDArray per entry, added up over the epoch."""
        correct = (y_hat.argmax(axis=1) == y.astype(y_hat.dtype)).sum()
        return [loss.sum(), correct]

    def finish(self, sums: list[float], count: int, split: str) -> dict[str, float]:
        return {f"{split}/loss": sums[0] / count, f"{split}/acc": sums[1] / count}


@tasks.register("classification")
def classification() -> Task:
    return Task()


class RegressionTask(Task):
    metric_names = ("loss",)
    default_metric = "val/loss"

    def default_loss(self):
        l2 = import_mxnet().gluon.loss.L2Loss()  # (y_hat - y)^2 / 2, the book's squared_loss
        return lambda y_hat, y: l2(y_hat, y.reshape(y_hat.shape))

    def stats(self, y_hat, y, loss):
        return [loss.sum()]

    def finish(self, sums, count, split):
        return {f"{split}/loss": sums[0] / count}


@tasks.register("regression")
def regression() -> Task:
    return RegressionTask()


class LanguageModelTask(Task):
    """Character-level language modelling, as the book trains its RNNs.

    The network maps (X, state) to (Y, state) with Y of shape (num_steps * batch_size, vocab_size); the loss is
    the cross-entropy of every step against the labels read time-major (``Y.T.reshape(-1)`` in the book). The
    loader's ``sampling`` decides the state: ``random`` starts every batch from the zero state, ``adjacent``
    carries it over, detached so that gradients stop at the batch boundary. ``count`` is the number of tokens,
    so the step averages the gradient per token and ``ppl`` is exp of the mean loss per token.
    """

    metric_names = ("loss", "ppl")
    default_metric = "val/ppl"

    def default_loss(self):
        ce = import_mxnet().gluon.loss.SoftmaxCrossEntropyLoss()
        return lambda y_hat, y: ce(y_hat, y.T.reshape((-1,)))

    def begin_pass(self, net, loader, ctx):
        sampling = getattr(loader, "sampling", None)
        if sampling not in ("random", "adjacent"):
            raise ValueError(f"task language_model needs a loader with sampling 'random' or 'adjacent', got "
                             f"{type(loader).__name__} with sampling {sampling!r}; use data.name: char_corpus")
        return {"carry_over": sampling == "adjacent", "state": None}

    def forward(self, net, X, carry):
        state = carry["state"]
        if state is None or not carry["carry_over"] or state[0].shape[-2] != X.shape[0]:
            state = net.begin_state(X.shape[0], X.context)
        else:
            state = [s.detach() for s in state]
        y_hat, state = net(X, state)
        return y_hat, {**carry, "state": state}

    def count(self, y) -> int:
        return y.size

    def stats(self, y_hat, y, loss):
        return [loss.sum()]

    def finish(self, sums, count, split):
        mean = sums[0] / count
        return {f"{split}/loss": mean, f"{split}/ppl": math.exp(mean) if mean < 700 else math.inf}


@tasks.register("language_model")
def language_model() -> Task:
    return LanguageModelTask()
