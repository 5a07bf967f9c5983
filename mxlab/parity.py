"""The book's own code on this machine: d2l-zh's chapter networks trained by ``d2lzh`` 1.0.0's own functions.

``d2lzh`` (PyPI, the book's utility package; ``pip install -e .[parity]``) supplies the loops: ``train_ch3``,
``train_ch5``, ``train_and_predict_rnn`` and ``train_and_predict_rnn_gluon``, with its ``sgd``, ``grad_clipping``,
``evaluate_accuracy`` and samplers. The networks below are the chapters' own cells, unchanged but for their
size arguments. Only the data differs in source: ``d2lzh.load_data_fashion_mnist`` goes through Gluon's
``FashionMNIST``, which checks the SHA-1 of the ``.gz`` archives and so refuses Debian's recompressed copies, so
the loops are fed the same verified arrays as mxlab, batched as the book's ``DataLoader(shuffle=True)`` batches
them (ToTensor: float32 in [0, 1], NCHW; a short last batch kept).

The loops print their results instead of returning them: the printed lines are parsed, and the final test
accuracy is taken again with ``d2lzh.evaluate_accuracy`` for more than the printed three digits.
"""
from __future__ import annotations

import contextlib
import io
import math
import random
import re
import statistics
import time
from typing import Callable

import numpy as np

from mxlab.devices import import_mxnet

EPOCH_RE = re.compile(r"^epoch (\d+), loss ([\d.]+), train acc ([\d.]+), test acc ([\d.]+)", re.M)
PPL_RE = re.compile(r"^epoch (\d+), perplexity ([\d.]+)", re.M)


def d2l():
    """The book's package, imported after mxlab's compatibility layer; a clear error where it is missing."""
    import_mxnet()
    try:
        import d2lzh
    except ImportError as exc:
        raise ImportError(f"the book's code needs d2lzh 1.0.0 and IPython ({exc}); install them with "
                          f"`pip install -e '.[parity]'` (d2lzh itself with --no-deps: its metadata pulls jupyter)"
                          ) from None
    return d2lzh


def seed_all(seed: int) -> None:
    mx = import_mxnet()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed % 2**31)


class Batches:
    """What ``gluon.data.DataLoader(FashionMNIST(...).transform_first(ToTensor()), batch_size, shuffle)`` yields,
    from arrays: a fresh permutation from ``np.random`` each pass (Gluon's ``RandomSampler``), last batch kept."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool):
        self.X = (images.astype(np.float32) / 255)[:, None]
        self.y = labels.astype(np.int32)
        self.batch_size, self.shuffle = batch_size, shuffle

    def __iter__(self):
        nd = import_mxnet().nd
        order = np.random.permutation(len(self.y)) if self.shuffle else np.arange(len(self.y))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield nd.array(self.X[idx]), nd.array(self.y[idx], dtype="int32")


def fashion_mnist(batch_size: int, limit: int | None = None):
    from mxlab.data.fashion_mnist import load_arrays

    arrays, _ = load_arrays()
    cut = slice(0, limit)
    return (Batches(arrays["train-images-idx3-ubyte"][cut], arrays["train-labels-idx1-ubyte"][cut], batch_size, True),
            Batches(arrays["t10k-images-idx3-ubyte"][cut], arrays["t10k-labels-idx1-ubyte"][cut], batch_size, False))


# ---------------------------------------------------------------- the chapters' networks (d2l-zh v1)

def _params(*shapes):
    nd = import_mxnet().nd
    params = []
    for shape in shapes:   # weights N(0, 0.01), biases zero, as each chapter makes them
        params.append(nd.random.normal(scale=0.01, shape=shape) if len(shape) == 2 else nd.zeros(shape))
    for p in params:
        p.attach_grad()
    return params


def softmax_scratch(d2l, lr=0.1):   # 3.6
    nd = import_mxnet().nd
    W, b = _params((784, 10), (10,))

    def net(X):
        X_exp = (nd.dot(X.reshape((-1, 784)), W) + b).exp()
        return X_exp / X_exp.sum(axis=1, keepdims=True)

    def cross_entropy(y_hat, y):
        return -nd.pick(y_hat, y).log()

    return dict(net=net, loss=cross_entropy, params=[W, b], lr=lr)


def mlp_scratch(d2l, lr=0.5):   # 3.9
    mx = import_mxnet()
    W1, b1, W2, b2 = params = _params((784, 256), (256,), (256, 10), (10,))

    def net(X):
        H = mx.nd.maximum(mx.nd.dot(X.reshape((-1, 784)), W1) + b1, 0)
        return mx.nd.dot(H, W2) + b2

    return dict(net=net, loss=mx.gluon.loss.SoftmaxCrossEntropyLoss(), params=params, lr=lr)


def dropout_scratch(d2l, lr=0.5, drop_prob1=0.2, drop_prob2=0.5):   # 3.13
    mx = import_mxnet()
    nd, autograd = mx.nd, mx.autograd
    W1, b1, W2, b2, W3, b3 = params = _params((784, 256), (256,), (256, 256), (256,), (256, 10), (10,))

    def dropout(X, drop_prob):
        keep_prob = 1 - drop_prob
        if keep_prob == 0:
            return X.zeros_like()
        mask = nd.random.uniform(0, 1, X.shape) < keep_prob
        return mask * X / keep_prob

    def net(X):
        H1 = (nd.dot(X.reshape((-1, 784)), W1) + b1).relu()
        if autograd.is_training():
            H1 = dropout(H1, drop_prob1)
        H2 = (nd.dot(H1, W2) + b2).relu()
        if autograd.is_training():
            H2 = dropout(H2, drop_prob2)
        return nd.dot(H2, W3) + b3

    return dict(net=net, loss=mx.gluon.loss.SoftmaxCrossEntropyLoss(), params=params, lr=lr)


def _gluon(layers, lr, init):
    mx = import_mxnet()
    net = mx.gluon.nn.Sequential()
    net.add(*layers)
    net.initialize(init)
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    return dict(net=net, loss=mx.gluon.loss.SoftmaxCrossEntropyLoss(), trainer=trainer)


def softmax(d2l, lr=0.1):   # 3.7
    mx = import_mxnet()
    return _gluon([mx.gluon.nn.Dense(10)], lr, mx.init.Normal(sigma=0.01))


def mlp(d2l, lr=0.5):   # 3.10
    nn, init = import_mxnet().gluon.nn, import_mxnet().init
    return _gluon([nn.Dense(256, activation="relu"), nn.Dense(10)], lr, init.Normal(sigma=0.01))


def dropout(d2l, lr=0.5, drop_prob1=0.2, drop_prob2=0.5):   # 3.13, Gluon
    nn, init = import_mxnet().gluon.nn, import_mxnet().init
    return _gluon([nn.Dense(256, activation="relu"), nn.Dropout(drop_prob1), nn.Dense(256, activation="relu"),
                   nn.Dropout(drop_prob2), nn.Dense(10)], lr, init.Normal(sigma=0.01))


def lenet(d2l, lr=0.9):   # 5.5
    mx = import_mxnet()
    nn = mx.gluon.nn
    return _gluon([nn.Conv2D(channels=6, kernel_size=5, activation="sigmoid"), nn.MaxPool2D(pool_size=2, strides=2),
                   nn.Conv2D(channels=16, kernel_size=5, activation="sigmoid"), nn.MaxPool2D(pool_size=2, strides=2),
                   nn.Dense(120, activation="sigmoid"), nn.Dense(84, activation="sigmoid"), nn.Dense(10)],
                  lr, mx.init.Xavier())


def _bn_lenet(norm):
    nn = import_mxnet().gluon.nn
    return [nn.Conv2D(6, kernel_size=5), norm(6, 4), nn.Activation("sigmoid"), nn.MaxPool2D(pool_size=2, strides=2),
            nn.Conv2D(16, kernel_size=5), norm(16, 4), nn.Activation("sigmoid"), nn.MaxPool2D(pool_size=2, strides=2),
            nn.Dense(120), norm(120, 2), nn.Activation("sigmoid"),
            nn.Dense(84), norm(84, 2), nn.Activation("sigmoid"), nn.Dense(10)]


def batchnorm(d2l, lr=1.0):   # 5.10, Gluon
    mx = import_mxnet()
    return _gluon(_bn_lenet(lambda features, dims: mx.gluon.nn.BatchNorm()), lr, mx.init.Xavier())


def batchnorm_scratch(d2l, lr=1.0):   # 5.10
    mx = import_mxnet()
    nd, autograd, init = mx.nd, mx.autograd, mx.init

    def batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum):
        if not autograd.is_training():
            X_hat = (X - moving_mean) / nd.sqrt(moving_var + eps)
        else:
            if len(X.shape) == 2:
                mean = X.mean(axis=0)
                var = ((X - mean) ** 2).mean(axis=0)
            else:
                mean = X.mean(axis=(0, 2, 3), keepdims=True)
                var = ((X - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
            X_hat = (X - mean) / nd.sqrt(var + eps)
            moving_mean = momentum * moving_mean + (1.0 - momentum) * mean
            moving_var = momentum * moving_var + (1.0 - momentum) * var
        return gamma * X_hat + beta, moving_mean, moving_var

    class BatchNorm(mx.gluon.nn.Block):
        def __init__(self, num_features, num_dims, **kwargs):
            super().__init__(**kwargs)
            shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
            self.gamma = self.params.get("gamma", shape=shape, init=init.One())
            self.beta = self.params.get("beta", shape=shape, init=init.Zero())
            self.moving_mean, self.moving_var = nd.zeros(shape), nd.zeros(shape)

        def forward(self, X):
            Y, self.moving_mean, self.moving_var = batch_norm(
                X, self.gamma.data(), self.beta.data(), self.moving_mean, self.moving_var, eps=1e-5, momentum=0.9)
            return Y

    return _gluon(_bn_lenet(BatchNorm), lr, init.Xavier())


CH3 = {"softmax_scratch": softmax_scratch, "softmax": softmax, "mlp_scratch": mlp_scratch, "mlp": mlp,
       "dropout_scratch": dropout_scratch, "dropout": dropout}
CH5 = {"lenet": lenet, "batchnorm": batchnorm, "batchnorm_scratch": batchnorm_scratch}


def rnn_scratch(d2l, vocab_size: int, num_hiddens: int = 256):   # 6.4
    nd, ctx = import_mxnet().nd, import_mxnet().cpu()

    def get_params():
        def _one(shape):
            return nd.random.normal(scale=0.01, shape=shape, ctx=ctx)

        params = [_one((vocab_size, num_hiddens)), _one((num_hiddens, num_hiddens)), nd.zeros(num_hiddens, ctx=ctx),
                  _one((num_hiddens, vocab_size)), nd.zeros(vocab_size, ctx=ctx)]
        for param in params:
            param.attach_grad()
        return params

    def init_rnn_state(batch_size, num_hiddens, ctx):
        return (nd.zeros(shape=(batch_size, num_hiddens), ctx=ctx),)

    def rnn(inputs, state, params):
        W_xh, W_hh, b_h, W_hq, b_q = params
        H, = state
        outputs = []
        for X in inputs:
            H = nd.tanh(nd.dot(X, W_xh) + nd.dot(H, W_hh) + b_h)
            outputs.append(nd.dot(H, W_hq) + b_q)
        return outputs, (H,)

    return rnn, get_params, init_rnn_state


# ---------------------------------------------------------------- running them

def _quiet(fn: Callable, *args, **kwargs) -> str:
    """What the book's loop prints, captured: its results are in there."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        fn(*args, **kwargs)
    return out.getvalue()


def run_image(key: str, seed: int, *, epochs: int = 5, batch_size: int = 256, limit: int | None = None,
              **hyper) -> dict:
    """One seed of a chapter 3 or 5 row by the book's loop; ``hyper`` overrides the chapter's lr/drop_prob."""
    d = d2l()
    mx = import_mxnet()
    seed_all(seed)
    train_iter, test_iter = fashion_mnist(batch_size, limit)
    start = time.perf_counter()
    if key in CH3:
        parts = CH3[key](d, **hyper)
        printed = _quiet(d.train_ch3, parts["net"], train_iter, test_iter, parts["loss"], epochs, batch_size,
                         parts.get("params"), parts.get("lr"), parts.get("trainer"))
        test_acc = d.evaluate_accuracy(test_iter, parts["net"])
    elif key in CH5:
        parts = CH5[key](d, **hyper)
        printed = _quiet(d.train_ch5, parts["net"], train_iter, test_iter, batch_size, parts["trainer"], mx.cpu(),
                         epochs)
        test_acc = d.evaluate_accuracy(test_iter, parts["net"], mx.cpu())
    else:
        raise KeyError(f"no book code for {key!r}; rows with one: {', '.join([*CH3, *CH5, *RNN])}")
    seconds = time.perf_counter() - start
    lines = EPOCH_RE.findall(printed)
    if len(lines) != epochs:
        raise RuntimeError(f"{key}: expected {epochs} epoch lines from the book's loop, got:\n{printed}")
    epoch, loss, train_acc, printed_test = lines[-1]
    if abs(float(printed_test) - test_acc) > 0.0006:   # the re-evaluation must be the printed one, unrounded
        raise RuntimeError(f"{key}: the loop printed test acc {printed_test}, re-evaluated {test_acc}")
    return {"train/loss": float(loss), "train/acc": float(train_acc), "test/acc": float(test_acc),
            "epoch": int(epoch), "seconds_per_epoch": seconds / epochs}


def corpus(spec) -> tuple[list[int], list[str], dict[str, int]]:
    """The text mxlab trains ``spec`` on, indexed the book's way (``load_data_jay_lyrics``: set order)."""
    from mxlab.data.text import read_corpus

    options = spec.data.options
    text, _ = read_corpus(options.get("corpus", "tang300"))
    if options.get("newlines", "space") == "space":
        text = text.replace("\n", " ").replace("\r", " ")
    text = text[:options.get("max_chars")]
    idx_to_char = list(set(text))
    char_to_idx = {char: i for i, char in enumerate(idx_to_char)}
    return [char_to_idx[char] for char in text], idx_to_char, char_to_idx


RNN = {"rnn_scratch random": ("rnn_scratch", True), "rnn_scratch adjacent": ("rnn_scratch", False),
       "rnn": ("rnn", None), "gru": ("gru", None), "lstm": ("lstm", None)}


def run_rnn(key: str, seed: int, *, epochs: int = 250, at_epoch: int = 200, limit: int | None = None) -> dict:
    """One seed of a chapter 6 row: the perplexity ``train_and_predict_rnn(_gluon)`` prints at ``at_epoch``."""
    from mxlab.spec import load_spec

    d = d2l()
    mx = import_mxnet()
    name, is_random = RNN[key]
    spec = load_spec(name)
    indices, idx_to_char, char_to_idx = corpus(spec)
    indices = indices[:limit]
    vocab_size, hidden = len(idx_to_char), spec.model.options.get("num_hiddens", 256)
    steps, batch, lr, clip = spec.data.options.get("num_steps", 35), spec.data.batch_size, 1e2, 1e-2
    prefixes = [p for p in spec.train.sample_prefixes if all(c in char_to_idx for c in p)] or [idx_to_char[0]]
    seed_all(seed)
    start = time.perf_counter()
    if name == "rnn_scratch":
        printed = _quiet(d.train_and_predict_rnn, *rnn_scratch(d, vocab_size, hidden), hidden, vocab_size, mx.cpu(),
                         indices, idx_to_char, char_to_idx, is_random, epochs, steps, lr, clip, batch, at_epoch, 50,
                         prefixes)
    else:
        from mxlab.models.rnn import RNN_SPEC

        # 6.5, 6.7 and 6.8 train their Gluon layer (the same classes as mxlab's) the same way, with the same settings.
        layer = RNN_SPEC[name](hidden)
        layer.initialize()
        printed = _quiet(d.train_and_predict_rnn_gluon, d.RNNModel(layer, vocab_size), hidden, vocab_size,
                         mx.cpu(), indices, idx_to_char, char_to_idx, epochs, steps, lr, clip, batch, at_epoch, 50,
                         prefixes)
    seconds = time.perf_counter() - start
    found = {int(e): float(p) for e, p in PPL_RE.findall(printed)}
    if at_epoch not in found:
        raise RuntimeError(f"{key}: no perplexity printed at epoch {at_epoch}:\n{printed}")
    return {"train/ppl": found[at_epoch], "epoch": at_epoch, "seconds_per_epoch": seconds / epochs}


LINEAR = {"linreg_scratch": (False, None), "linreg": (True, None), "weight_decay_scratch lambda=0": (False, 0),
          "weight_decay_scratch lambda=3": (False, 3), "weight_decay lambda=0": (True, 0),
          "weight_decay lambda=3": (True, 3)}


def run_linear(key: str, seed: int, **_) -> dict:
    """3.2/3.3 (linear regression) and 3.12 (weight decay): d2lzh has no train function for these, so this is
    the chapter's own loop around d2lzh's ``data_iter``, ``linreg``, ``squared_loss`` and ``sgd``, and the
    chapter's own synthetic data (the same distribution as mxlab's, drawn the book's way)."""
    d, mx = d2l(), import_mxnet()
    nd, autograd, gluon = mx.nd, mx.autograd, mx.gluon
    use_gluon, lambd = LINEAR[key]
    seed_all(seed)
    linreg = lambd is None   # 3.2/3.3: 1000 examples, 2 inputs; 3.12: 20 training examples, 200 inputs
    n_train, n_test, dims, epochs, lr, bs = (1000, 0, 2, 3, 0.03, 10) if linreg else (20, 100, 200, 100, 0.003, 1)
    features = nd.random.normal(scale=1, shape=(n_train + n_test, dims))
    true_w = nd.array([[2], [-3.4]]) if linreg else nd.ones((dims, 1)) * 0.01
    labels = nd.dot(features, true_w).reshape((-1,)) + (4.2 if linreg else 0.05)
    labels += nd.random.normal(scale=0.01, shape=labels.shape)
    X_train, y_train = features[:n_train], labels[:n_train]
    sigma = 0.01 if linreg else 1.0
    start = time.perf_counter()
    if use_gluon:
        net = gluon.nn.Sequential()
        net.add(gluon.nn.Dense(1))
        net.initialize(mx.init.Normal(sigma=sigma))
        loss = gluon.loss.L2Loss()
        trainers = [gluon.Trainer(net.collect_params(".*weight"), "sgd", {"learning_rate": lr, "wd": lambd or 0}),
                    gluon.Trainer(net.collect_params(".*bias"), "sgd", {"learning_rate": lr})]
        train_iter = gluon.data.DataLoader(gluon.data.ArrayDataset(X_train, y_train), bs, shuffle=True)
        for _ in range(epochs):
            for X, y in train_iter:
                with autograd.record():
                    l = loss(net(X), y)
                l.backward()
                for trainer in trainers:
                    trainer.step(bs)
        w, train_l = net[0].weight.data(), loss(net(X_train), y_train)
    else:
        w, b = nd.random.normal(scale=sigma, shape=(dims, 1)), nd.zeros(shape=(1,))
        w.attach_grad()
        b.attach_grad()
        for _ in range(epochs):
            for X, y in d.data_iter(bs, X_train, y_train):
                with autograd.record():
                    l = d.squared_loss(d.linreg(X, w, b), y) + (lambd or 0) * (w ** 2).sum() / 2
                l.backward()
                d.sgd([w, b], lr, bs)
        train_l = d.squared_loss(d.linreg(X_train, w, b), y_train)
    seconds = time.perf_counter() - start
    metric = {"train/loss": float(train_l.mean().asscalar())} if lambd is None else {
        "l2_norm_w": float(w.norm().asscalar())}
    return {**metric, "epoch": epochs, "seconds_per_epoch": seconds / epochs}


def has_book_code(key: str) -> bool:
    return key in CH3 or key in CH5 or key in RNN or key in LINEAR


def run_seeds(key: str, seeds: list[int], **kwargs) -> dict:
    """A row's book code over ``seeds``: each seed's values, their mean and sample standard deviation."""
    runner = run_rnn if key in RNN else run_linear if key in LINEAR else run_image
    per_seed = [runner(key, seed, **kwargs) for seed in seeds]
    shown = [k for k in per_seed[0] if k not in ("epoch", "seconds_per_epoch")]
    return {"per_seed": [{k: m[k] for k in shown} for m in per_seed], "seeds": list(seeds),
            "metrics": {k: statistics.fmean(m[k] for m in per_seed) for k in shown},
            "std": {k: statistics.stdev([m[k] for m in per_seed]) if len(per_seed) > 1 else math.nan for k in shown},
            "epoch": per_seed[-1]["epoch"],
            "seconds_per_epoch": statistics.fmean(m["seconds_per_epoch"] for m in per_seed),
            "code": f"d2lzh {_version()}"}


def _version() -> str:
    from importlib.metadata import version

    return version("d2lzh")
