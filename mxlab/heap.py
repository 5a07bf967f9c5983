"""Python's cyclic garbage collector while a process of mxlab's sets itself up.

Setting up imports MXNet, MLflow with SQLAlchemy, and matplotlib: several hundred thousand objects that live as long
as the process. Python's collector scans every one of them again at each full collection, and the imports set those
off as the heap grows: in ``mxlab run linreg train.epochs=1`` here, 6 full collections took 1.4-1.8 s of a 7-8.5 s
run, and one more at exit 0.6 s (benchmarks/README.md, attempt 31). Imports make next to no garbage (10 to 123
objects a collection).

So such a process holds automatic collection (:func:`held`) until its setting up is over (:func:`settle`: the
runner calls it when training starts). What exists then is frozen out of every later collection, and the collector
runs as usual on what training and the rest of the run make. A process that calls the runner from its own code (a
notebook, a test) is not held and keeps Python's usual collector.

A study goes further (:func:`frozen`, :func:`collect_trial`): after each trial one collection frees the trial's
network, and what outlives it is frozen in turn.
"""
from __future__ import annotations

import contextlib
import gc

_holding = False


@contextlib.contextmanager
def held():
    """Automatic collection off for the block, or until :func:`settle` inside it. At its end what is alive is frozen
    too: a process that ends with the block spares Python's exit one more full scan (0.6 s here) that would only
    free memory the process is giving back."""
    global _holding
    if _holding or not gc.isenabled():   # held already, or someone else manages the collector
        yield
        return
    gc.disable()
    _holding = True
    try:
        yield
    finally:
        settle()
        gc.freeze()


def settle(*modules: str) -> None:
    """The setting up is over: import ``modules`` too (what the work ahead imports later, so that they are frozen with
    the rest), freeze everything alive, and collect as usual from now on. Does nothing unless :func:`held`."""
    global _holding
    if not _holding:
        return
    import importlib

    try:
        for name in modules:
            importlib.import_module(name)
    finally:
        _holding = False
        gc.freeze()
        gc.enable()


@contextlib.contextmanager
def frozen():
    """A study: what is alive before it (MXNet, MLflow, the data) is frozen out of the collections after each trial
    (:func:`collect_trial`), which otherwise scanned it all: 0.6 s a trial here. Unfrozen when the study ends."""
    settle()   # a held process has only its imports: nothing to collect
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def collect_trial(study, trial) -> None:
    """After each trial (an Optuna callback): a full collection frees the finished trial's network, and its device
    memory, at once. What survives it is long-lived (modules and caches the first trial loaded, the study's
    state) and is frozen too, so the next collection scans only the next trial's objects: 35 -> 4 ms a trial."""
    gc.collect()
    gc.freeze()
