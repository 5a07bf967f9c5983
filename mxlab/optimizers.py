"""Which optimizers a spec may name: every one MXNet registers, plus ``momentum`` (sgd with ``train.momentum``).

``train.optimizer_params`` passes extra keyword arguments to the optimizer; the names it accepts are read from
the optimizer class itself, so adding an optimizer to MXNet's registry is all it takes to use it here.
"""
from __future__ import annotations

import inspect

# sgd with train.momentum: the name the book's readers know; every other name is one MXNet registers.
ALIASES = {"momentum": "sgd"}
# Set by their own spec keys, so never a second time through train.optimizer_params.
OWN_KEYS = {"learning_rate": "train.lr", "wd": "train.wd", "clip_gradient": "train.clip_gradient"}
# Wired by Gluon's Trainer itself.
TRAINER_KEYS = {"param_idx2name", "param_dict", "sym", "rescale_grad", "lr_scheduler", "begin_num_update"}


def _registry() -> dict:
    from mxlab.devices import import_mxnet

    return import_mxnet().optimizer.Optimizer.opt_registry


def mxnet_name(name: str) -> str:
    return ALIASES.get(name, name).lower()


def names() -> list[str]:
    return sorted({*ALIASES, *(n for n in _registry() if not n.startswith("_") and n != "test")})


def known(name: str) -> bool:
    return name in ALIASES or (mxnet_name(name) in _registry() and name in names())


def accepted_params(name: str) -> set[str]:
    """The keyword arguments the optimizer's constructors take, less those set elsewhere."""
    cls = _registry()[mxnet_name(name)]
    taken = {p.name for klass in cls.__mro__ if "__init__" in vars(klass)
             for p in inspect.signature(klass.__init__).parameters.values()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
    return taken - set(OWN_KEYS) - TRAINER_KEYS
