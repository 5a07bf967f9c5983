"""The fit loop: spec + network + data -> one metric dict per epoch. It knows nothing of MLflow or Optuna.

Data-parallel on any list of contexts: each batch is split across them with ``split_and_load`` and one
updater steps all copies. Loss and accuracy are summed on the device and read once per epoch. Every epoch
reseeds mxnet, numpy and random from ``train.seed + epoch``, so an epoch's randomness depends only on its
number: two runs with the same seed match, and training continued from epoch k goes on as if never stopped.
"""
from __future__ import annotations

import math
import os
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

DISTRIBUTED = ("dist_sync", "dist_sync_device", "dist_async")
_KVSTORE: dict = {}   # ps-lite starts once per process: one distributed kvstore, made on first use


def kvstore(name: str):
    """What the Trainer takes for ``train.kvstore``: the name of a local one, or the process's distributed one."""
    if name not in DISTRIBUTED:
        return name
    if not _KVSTORE:
        if os.environ.get("DMLC_ROLE") != "worker":
            raise ValueError(f"train.kvstore={name} needs MXNet's parameter server: start the job with `mxlab launch "
                             f"NAME -n WORKERS`; allowed in one process: local, device")
        _KVSTORE[name] = mx.kv.create(name)
    if name not in _KVSTORE:
        raise ValueError(f"train.kvstore={name}: this process already joined a {next(iter(_KVSTORE))} job")
    return _KVSTORE[name]


def worker_rank(train) -> tuple[int, int]:
    """(rank, number of workers) of this process: (0, 1) outside a distributed job."""
    kv = kvstore(train.kvstore)
    return (0, 1) if isinstance(kv, str) else (kv.rank, kv.num_workers)


STATS_KEY = 1 << 24   # beside the Trainer's keys (0 .. parameters - 1): the epoch's sums of every worker


class GluonUpdater:
    """A Gluon ``Trainer`` with any optimizer MXNet registers; weight decay applies to weights only, never to
    biases or batch-norm shifts.

    In a synchronous distributed job the servers only sum gradients and every worker applies the same update to
    the same weights: a step averages the gradient over the whole job's batch (workers x ``data.batch_size``), as
    one process with that batch would. With ``dist_async`` the servers apply each worker's gradient as it comes.
    """

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
        # The Trainer keys its kvstore and optimizer state by position in this list. Given the ParameterDict it
        # would sort by name, and names come from process-wide layer counters (as text, dense10 sorts before dense9),
        # so a resumed copy of the network could get another layer's state: pass the network's own order.
        self.all_params = list(params.values())
        kv = kvstore(train.kvstore)
        self.kv = None if isinstance(kv, str) else kv
        self.sync = self.kv is not None and train.kvstore != "dist_async"
        self.workers, self.rank = (kv.num_workers, kv.rank) if self.kv else (1, 0)
        # Workers update when the servers must only sum (sync jobs), or when gradients are combined first.
        on_kvstore = None if train.kvstore == "dist_async" else (
            False if self.sync or len(ctx_list) > 1 or self.clip else None)
        self.trainer = mx.gluon.Trainer(self.all_params, optimizers.mxnet_name(train.optimizer), options, kvstore=kv,
                                        update_on_kvstore=on_kvstore)
        self._stats_ready = self._pulled = False

    def _pull_initial_weights(self) -> None:
        """Every worker starts from rank 0's weights, and all of them before any gradient is pushed.

        The Trainer sets up its kvstore inside its first step: it pulls the initial weights and pushes the first
        gradients at once, and the two do not wait for each other. When the servers only sum (a synchronous
        job), their copy of a parameter becomes the gradient sum at the first push, so a late pull put that sum
        into one worker's weights (seen here: the last layer's bias of rank 0, one job in five)."""
        trainer = self.trainer
        if not trainer._kv_initialized:
            trainer._init_kvstore()
        if trainer._params_to_init:
            trainer._init_params()
        mx.nd.waitall()
        self._pulled = True

    def penalty(self):
        return None

    def end_epoch(self, totals: list, count: int, seconds: float) -> tuple[list, int, float]:
        """The whole job's epoch in a synchronous job: sums over workers, the slowest worker's seconds; batch-norm
        statistics (not trained, so not summed by the Trainer) averaged, so every worker holds the same network."""
        if not self.sync:
            return totals, count, seconds
        copies = self.workers * len(self.all_params[0].list_data()) if self.all_params else 1
        for key, param in enumerate(self.all_params):
            if param.grad_req == "null":
                arrays = param.list_data()
                self.kv.push(key, arrays)
                self.kv.pull(key, out=arrays)
                for a in arrays:
                    a /= copies
        clock = [0.0] * self.workers
        clock[self.rank] = seconds
        values = mx.nd.array([*totals, count, *clock], dtype="float64")
        if not self._stats_ready:   # every worker calls init: it is a barrier
            self.kv.init(STATS_KEY, mx.nd.zeros(values.shape, dtype="float64"))
            self._stats_ready = True
        self.kv.push(STATS_KEY, values)
        self.kv.pull(STATS_KEY, out=values)
        summed = values.asnumpy().tolist()
        n = len(totals)
        return summed[:n], int(round(summed[n])), max(summed[n + 1:])

    def step(self, count: int) -> None:
        if self.sync:
            if not self._pulled:
                self._pull_initial_weights()
            count *= self.workers   # the servers return the sum over all workers' batches
        if self.clip:
            self.trainer.allreduce_grads()
            # Grads are sums over `count` examples: clip their mean to the threshold, as the book does.
            for ctx_grads in zip(*(p.list_grad() for p in self.params)):
                mx.gluon.utils.clip_global_norm(list(ctx_grads), self.clip * count, check_isfinite=False)
            self.trainer.update(count)
        else:
            self.trainer.step(count)

    def save_states(self, path: str) -> None:
        if self.kv is not None and not self.sync:   # dist_async: the optimizer state lives on the servers
            open(path, "wb").close()
            return
        self.trainer.save_states(path)

    def load_states(self, path: str) -> None:
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: no optimizer state (written by a dist_async job, whose servers held it); "
                             f"allowed: a checkpoint of a local or dist_sync run")
        self.trainer.load_states(path)  # a file this project wrote itself (a pickle of optimizer state)


def make_updater(net, train, ctx_list):
    """The network's own updater if it declares one (scratch models step by hand), else a Gluon Trainer."""
    own = getattr(net, "make_updater", None)
    if own and train.kvstore in DISTRIBUTED:
        raise ValueError(f"train.kvstore={train.kvstore}: {type(net).__name__} is written from scratch and updates "
                         f"its own parameters; allowed: a Gluon model (one whose experiment is not *_scratch)")
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
    running_sums: list = field(default_factory=list)   # the epoch's loss sums so far, on the devices
    running_count: int = 0

    def running_loss(self) -> float | None:
        """The epoch's mean training loss so far. It waits for the devices, so a progress bar asks rarely."""
        if not self.running_count or not self.running_sums:
            return None
        return sum(float(s[0].asscalar()) for s in self.running_sums if s is not None) / self.running_count


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
        state.running_sums, state.running_count = sums, count
        # Keep at most two batches queued in the engine (bounded memory), without copying to the host.
        if pending is not None:
            pending.wait_to_read()
        pending = sums[0][0]
        for cb in callbacks:
            cb.on_batch_end(state, i + 1, len(loader))
    mx.nd.waitall()
    if count == 0:
        raise ValueError(f"the training split gives no batch with at least one example per device: "
                         f"{getattr(loader, 'num_examples', 'too few')} example(s) for {len(ctx_list)} devices; "
                         f"allowed: data.limit or data.batch_size of at least {len(ctx_list)}, or fewer devices in "
                         f"train.device")
    seconds = time.perf_counter() - start
    totals = [sum(values) for values in zip(*(_read(s) for s in sums if s is not None))]
    end_epoch = getattr(state.updater, "end_epoch", None)   # a distributed job's totals are the whole job's
    if end_epoch is not None:
        totals, count, seconds = end_epoch(totals, count, seconds)
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
            raise NonFiniteLoss(f"epoch {epoch}: train/loss is {metrics['train/loss']}; start a new run with a lower "
                                f"train.lr (now {spec.train.lr}) or train.clip_gradient set (resume keeps both)")
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
