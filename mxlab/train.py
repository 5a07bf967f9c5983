"""The fit loop: spec + network + data -> one metric dict per epoch. It knows nothing of MLflow or Optuna.

Data-parallel on any list of contexts: each batch is split across them with ``split_and_load`` and one
updater steps all copies. Loss and accuracy are summed on the device and read once per epoch. Every epoch
reseeds mxnet, numpy and random from ``train.seed + epoch``, so an epoch's randomness depends only on its
number: two runs with the same seed match, and training continued from epoch k goes on as if never stopped.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mxlab import optimizers
from mxlab.devices import import_mxnet
from mxlab.registry import models
from mxlab.tasks import tasks

mx = import_mxnet()   # the one entry that prepares the interpreter (CUDA libraries, compatibility) first


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss: the run fails rather than logging garbage."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed % 2**31)


# ---------------------------------------------------------------- building

def model_options(spec, bundle=None) -> dict:
    """The builder's keyword arguments: the spec's options, with data-derived ones (``vocab_size``) taken from
    the data unless the spec sets them."""
    options = models.options(spec.model.name)
    derived = {k: v for k, v in (bundle.extra if bundle else {}).items() if k in options}
    chosen = {k: v for k, v in spec.model.options.items() if v is not None or k not in derived}
    return {**derived, **chosen}


def build_net(spec, bundle=None):
    return models.get(spec.model.name)(**model_options(spec, bundle))


def initializer(name: str):
    init = mx.init
    return {"xavier": init.Xavier(), "normal": init.Normal(0.01), "uniform": init.Uniform()}[name]


def prepare_net(spec, bundle, ctx_list):
    """Build, initialise on every context (shapes inferred from one batch) and hybridize where possible."""
    seed_everything(spec.train.seed)
    net = build_net(spec, bundle)
    if is_scratch(net):
        if len(ctx_list) > 1:
            raise ValueError(f"model {spec.model.name!r} is written from scratch and holds its parameters on one "
                             f"device; train it with train.device=cpu or gpu:0, not {len(ctx_list)} devices")
        net.initialize(ctx=ctx_list)
        return net
    net.initialize(initializer(spec.train.init), ctx=ctx_list)
    if spec.train.hybridize and isinstance(net, mx.gluon.HybridBlock):
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def is_scratch(net) -> bool:
    return getattr(net, "scratch", False)


# ---------------------------------------------------------------- updaters

class GluonUpdater:
    """A Gluon ``Trainer`` with any optimizer MXNet registers; weight decay applies to weights only, never to
    biases or batch-norm shifts."""

    def __init__(self, net, train, ctx_list):
        params = net.collect_params()
        for name, param in params.items():
            if not name.endswith("weight"):
                param.wd_mult = 0.0
        options = {"learning_rate": train.lr, "wd": train.wd, **train.optimizer_params}
        if train.optimizer == "momentum":
            options["momentum"] = train.momentum
        self.clip = train.clip_gradient
        self.params = [p for p in params.values() if p.grad_req != "null"]
        self.trainer = mx.gluon.Trainer(params, optimizers.mxnet_name(train.optimizer), options,
                                        update_on_kvstore=False if len(ctx_list) > 1 or self.clip else None)

    def penalty(self):
        return None

    def step(self, count: int) -> None:
        if self.clip:
            self.trainer.allreduce_grads()
            # Grads are sums over `count` examples: clip their mean to the threshold, as the book does.
            for ctx_grads in zip(*(p.list_grad() for p in self.params)):
                mx.gluon.utils.clip_global_norm(list(ctx_grads), self.clip * count, check_isfinite=False)
            self.trainer.update(count)
        else:
            self.trainer.step(count)

    def save_states(self, path: str) -> None:
        self.trainer.save_states(path)

    def load_states(self, path: str) -> None:
        self.trainer.load_states(path)  # a file this project wrote itself (a pickle of optimizer state)


def make_updater(net, train, ctx_list):
    """The network's own updater if it declares one (scratch models step by hand), else a Gluon Trainer."""
    own = getattr(net, "make_updater", None)
    return own(train) if own else GluonUpdater(net, train, ctx_list)


# ---------------------------------------------------------------- the loop

@dataclass
class FitState:
    """What callbacks see: the objects being trained and the history so far."""

    spec: Any
    net: Any
    updater: Any
    data: Any
    ctx: list
    history: list = field(default_factory=list)
    epoch: int = 0
    stop_reason: str | None = None   # a callback sets it to end training after the current epoch


def _split(batch, ctx_list):
    gluon = mx.gluon
    ctx_list = ctx_list[:batch.shape[0]]   # in evaluation, a batch smaller than the device count leaves some idle
    if len(ctx_list) == 1:
        return [batch.as_in_context(ctx_list[0])]
    return gluon.utils.split_and_load(batch, ctx_list, even_split=False)


def _read(sums) -> list[float]:
    return [float(s.asscalar()) for s in sums]


def _add(total, part):
    return part if total is None else [t + p for t, p in zip(total, part)]


def train_epoch(state: FitState, task, loss_fn, callbacks) -> tuple[dict, int, float]:
    autograd = mx.autograd
    loader, ctx_list = state.data.train, state.ctx
    carry = [task.begin_pass(state.net, loader, ctx) for ctx in ctx_list]
    sums = [None] * len(ctx_list)
    count, pending = 0, None
    start = time.perf_counter()
    for i, (X, y) in enumerate(loader):
        if X.shape[0] < len(ctx_list):
            # Too few examples to give every device one: an idle device would hand the Trainer a stale gradient.
            # Skipped, it costs at most len(ctx) - 1 examples of the epoch.
            continue
        Xs, ys = _split(X, ctx_list), _split(y, ctx_list)
        losses = []
        with autograd.record():
            for k, (X_k, y_k) in enumerate(zip(Xs, ys)):
                y_hat, carry[k] = task.forward(state.net, X_k, carry[k])
                l = loss_fn(y_hat, y_k)
                penalty = state.updater.penalty()
                # The penalty shapes the gradient; the reported loss stays the data loss, as in the book.
                objective = l if penalty is None else l + penalty.as_in_context(l.context)
                losses.append((y_hat, y_k, l, objective))
        for *_, objective in losses:
            objective.backward()
        batch_count = task.count(y)
        # As the book's trainer.step(batch_size): the gradient is divided by a full batch's count, so a short
        # last batch takes a proportionally shorter step instead of a full-length step on fewer examples.
        state.updater.step(batch_count * state.spec.data.batch_size // y.shape[0])
        count += batch_count
        for k, (y_hat, y_k, l, _) in enumerate(losses):
            sums[k] = _add(sums[k], task.stats(y_hat, y_k, l))
        # Keep at most two batches queued in the engine (bounded memory), without copying to the host.
        if pending is not None:
            pending.wait_to_read()
        pending = sums[0][0]
        for cb in callbacks:
            cb.on_batch_end(state, i + 1, len(loader))
    mx.nd.waitall()
    seconds = time.perf_counter() - start
    totals = [sum(values) for values in zip(*(_read(s) for s in sums if s is not None))]
    return task.finish(totals, count, "train"), count, seconds


def evaluate(net, loader, task, ctx_list, split: str = "test") -> dict[str, float]:
    """Metrics of ``net`` on one split, in inference mode (dropout off, batch norm on moving statistics)."""
    loss_fn = task.loss(net)
    carry = [task.begin_pass(net, loader, ctx) for ctx in ctx_list]
    sums = [None] * len(ctx_list)
    count = 0
    for X, y in loader:
        for k, (X_k, y_k) in enumerate(zip(_split(X, ctx_list), _split(y, ctx_list))):
            y_hat, carry[k] = task.forward(net, X_k, carry[k])
            sums[k] = _add(sums[k], task.stats(y_hat, y_k, loss_fn(y_hat, y_k)))
        count += task.count(y)
    totals = [sum(values) for values in zip(*(_read(s) for s in sums if s is not None))]
    return task.finish(totals, count, split)


def fit(spec, net, data, ctx_list: Sequence, callbacks: Sequence = (), start_epoch: int = 0,
        updater=None, history: list | None = None) -> list[dict]:
    """Train for epochs ``start_epoch+1 .. spec.train.epochs``; returns one metric dict per epoch.

    Callbacks get ``on_fit_begin(state)``, ``on_batch_end(state, i, n)``, ``on_epoch_end(state, metrics)`` and
    ``on_fit_end(state)``. A non-finite training loss raises :class:`NonFiniteLoss` before any callback sees it.
    A callback that sets ``state.stop_reason`` ends training after that epoch (early stopping).
    """
    task = tasks.get(spec.task)()
    ctx_list = list(ctx_list)
    updater = updater or make_updater(net, spec.train, ctx_list)
    state = FitState(spec, net, updater, data, ctx_list, history=list(history or []), epoch=start_epoch)
    loss_fn = task.loss(net)
    for cb in callbacks:
        cb.on_fit_begin(state)
    for epoch in range(start_epoch + 1, spec.train.epochs + 1):
        state.epoch = epoch
        seed_everything(spec.train.seed + epoch)
        epoch_start = time.perf_counter()
        metrics, count, seconds = train_epoch(state, task, loss_fn, callbacks)
        if not math.isfinite(metrics["train/loss"]):
            raise NonFiniteLoss(f"epoch {epoch}: train/loss is {metrics['train/loss']}; lower train.lr "
                                f"(now {spec.train.lr}) or set train.clip_gradient")
        for split, loader in data.splits().items():
            if split != "train":
                metrics.update(evaluate(net, loader, task, ctx_list, split))
        # A model may report facts of its own each epoch (the weight-decay models: l2_norm_w).
        own_metrics = getattr(net, "epoch_metrics", None)
        if own_metrics is not None:
            metrics.update(own_metrics())
        metrics["perf/epoch_seconds"] = time.perf_counter() - epoch_start
        metrics["perf/samples_per_second"] = count / seconds if seconds > 0 else float("nan")
        state.history.append({"epoch": epoch, **metrics})
        for cb in callbacks:
            cb.on_epoch_end(state, metrics)
        if state.stop_reason:
            break
    for cb in callbacks:
        cb.on_fit_end(state)
    return state.history
