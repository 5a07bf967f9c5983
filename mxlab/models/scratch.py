"""Networks written from scratch, as the book's "从零开始实现" sections do.

Parameters are plain NDArrays with ``attach_grad``; the forward pass is written by hand; the fit loop records
the loss under ``autograd.record()`` and calls ``backward()``; :class:`ScratchSGD` is the hand-written
``sgd`` step. Weight decay is the book's explicit L2 penalty added to the loss, on the parameters declared
with ``decay=True``.
"""
from __future__ import annotations

import mxnet as mx
from mxnet import nd


class ScratchNet:
    """Holds named parameters; subclasses declare them in ``__init__`` and write ``forward``."""

    scratch = True

    def __init__(self):
        self._declared: dict[str, tuple[tuple, str, bool]] = {}
        self.params: dict = {}
        self.ctx = None

    def declare(self, name: str, shape: tuple, init: str = "normal", decay: bool = False) -> None:
        """``init`` is ``normal`` (N(0, 0.01^2), the book's choice) or ``zeros``/``ones``."""
        self._declared[name] = (tuple(shape), init, decay)

    def initialize(self, ctx=None, **_ignored) -> None:
        self.ctx = ctx[0] if isinstance(ctx, (list, tuple)) else (ctx or mx.cpu())
        for name, (shape, init, _) in self._declared.items():
            if init == "normal":
                value = nd.random.normal(scale=0.01, shape=shape, ctx=self.ctx)
            else:
                value = getattr(nd, init)(shape, ctx=self.ctx)
            value.attach_grad()
            self.params[name] = value

    def decayed(self) -> list:
        return [self.params[n] for n, (_, _, decay) in self._declared.items() if decay]

    def __call__(self, X):
        return self.forward(X)

    def forward(self, X):
        raise NotImplementedError

    def save_parameters(self, path: str) -> None:
        nd.save(path, self.params)

    def load_parameters(self, path: str, ctx=None, **_ignored) -> None:
        loaded = nd.load(path)
        if set(loaded) != set(self._declared):
            raise ValueError(f"{path} holds parameters {sorted(loaded)}, this network has {sorted(self._declared)}")
        self.ctx = (ctx[0] if isinstance(ctx, (list, tuple)) else ctx) or self.ctx or mx.cpu()
        for name, value in loaded.items():
            expected = self._declared[name][0]
            if value.shape != expected:
                raise ValueError(f"{path}: parameter {name} has shape {value.shape}, expected {expected}")
            value = value.as_in_context(self.ctx)
            value.attach_grad()
            self.params[name] = value

    def make_updater(self, train):
        if train.optimizer != "sgd":
            raise ValueError(f"train.optimizer: got {train.optimizer!r}; a from-scratch model steps with its "
                             f"hand-written sgd only: allowed: sgd")
        return ScratchSGD(self, train.lr, train.wd, train.clip_gradient)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}{shape}" for n, (shape, _, _) in self._declared.items())
        return f"{type(self).__name__}(from scratch: {shapes})"


class ScratchSGD:
    """The book's ``sgd``: ``param[:] = param - lr * param.grad / batch_size``, plus its L2 penalty and clipping."""

    def __init__(self, net: ScratchNet, lr: float, wd: float, clip: float | None):
        self.net, self.lr, self.wd, self.clip = net, lr, wd, clip

    def penalty(self):
        """``wd * ||w||^2 / 2`` for every decayed parameter: the book's ``lambd * l2_penalty(w)``."""
        if not self.wd or not self.net.decayed():
            return None
        return self.wd * sum((w ** 2).sum() for w in self.net.decayed()) / 2

    def step(self, batch_size: int) -> None:
        params = list(self.net.params.values())
        if self.clip:
            # The book's grad_clipping, on the mean gradient that the step applies; the scale stays on the
            # device (no read to the host in the hot path): min(1, clip / norm).
            norm = sum((p.grad ** 2).sum() for p in params).sqrt() / batch_size
            scale = nd.minimum(self.clip / nd.maximum(norm, 1e-30), 1.0)
            for p in params:
                p.grad[:] = nd.broadcast_mul(p.grad, scale.reshape((1,) * p.grad.ndim))
        for p in params:
            p[:] = p - self.lr * p.grad / batch_size

    def save_states(self, path: str) -> None:
        """Plain SGD keeps no state; the file exists so every updater resumes the same way."""
        open(path, "wb").close()

    def load_states(self, path: str) -> None:
        pass
