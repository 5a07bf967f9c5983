"""Character-level language models (book chapter 6): a tanh RNN from scratch, and Gluon's RNN, GRU and LSTM.

Every model maps a batch of character indices X (batch_size, num_steps) and a hidden state to
``(Y, state)``: Y holds the scores over the vocabulary for every step, (num_steps * batch_size, vocab_size),
time-major as the book concatenates them, and ``state`` is what the next batch may start from. ``begin_state``
gives the zero state; called without a state, a model starts from it. ``vocab_size`` comes from the data.

The book's RNN notes observe that a plain RNN's gradients vanish or explode over long spans (hence the
gradient clipping, ``train.clip_gradient``) and ask for a mechanism to forget and to keep: GRU (reset and
update gates) and LSTM (forget, input and output gates with a memory cell) are that answer.
"""
from __future__ import annotations

from typing import Optional

import mxnet as mx
from mxnet import autograd, nd
from mxnet.gluon import nn, rnn

from mxlab.models.scratch import ScratchNet
from mxlab.registry import models


def _check_vocab(vocab_size: Optional[int], name: str, initializing: bool = False) -> Optional[int]:
    """``vocab_size`` may be unknown while a spec is only checked; a network is initialised only once it is known."""
    if (vocab_size is None and initializing) or (vocab_size is not None and vocab_size < 1):
        raise ValueError(f"model {name}: vocab_size: got {vocab_size!r}; allowed: an integer >= 1, normally filled "
                         f"in from a text dataset (data.name: char_corpus)")
    return vocab_size


class RNNScratch(ScratchNet):
    """The book's ``rnn`` with ``get_params``: H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), O_t = H_t W_hq + b_q,
    with one-hot inputs and hand-made parameters (N(0, 0.01^2) weights, zero biases)."""

    def __init__(self, vocab_size: Optional[int], num_hiddens: int):
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        if vocab_size is not None:
            # train.wd decays the weights (the book's L2 penalty), never the biases.
            self.declare("W_xh", (vocab_size, num_hiddens), "normal", decay=True)
            self.declare("W_hh", (num_hiddens, num_hiddens), "normal", decay=True)
            self.declare("b_h", (num_hiddens,), "zeros")
            self.declare("W_hq", (num_hiddens, vocab_size), "normal", decay=True)
            self.declare("b_q", (vocab_size,), "zeros")

    def initialize(self, ctx=None, **kwargs) -> None:
        _check_vocab(self.vocab_size, "rnn_scratch", initializing=True)
        super().initialize(ctx, **kwargs)

    def begin_state(self, batch_size: int, ctx=None) -> list:
        return [nd.zeros((batch_size, self.num_hiddens), ctx=ctx or self.ctx)]

    def __call__(self, X, state=None):
        return self.forward(X, state)

    def forward(self, X, state=None):
        if state is None:
            state = self.begin_state(X.shape[0], X.context)
        p = self.params
        (H,) = state
        outputs = []
        # The book's to_onehot: one (batch_size, vocab_size) matrix per time step.
        for X_t in nd.one_hot(X.T, self.vocab_size):
            H = nd.tanh(nd.dot(X_t, p["W_xh"]) + nd.dot(H, p["W_hh"]) + p["b_h"])
            outputs.append(nd.dot(H, p["W_hq"]) + p["b_q"])
        return nd.concat(*outputs, dim=0), [H]


@models.register()
def rnn_scratch(*, vocab_size: Optional[int] = None, num_hiddens: int = 256) -> ScratchNet:
    return RNNScratch(_check_vocab(vocab_size, "rnn_scratch"), num_hiddens)


class RNNModel(nn.HybridBlock):
    """The book's ``RNNModel``: a recurrent layer over one-hot inputs, then one Dense layer applied to the
    (num_steps * batch_size, num_hiddens) reshape of its outputs."""

    def __init__(self, layer, vocab_size: Optional[int], **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        with self.name_scope():
            self.rnn = layer
            if vocab_size is not None:
                self.dense = nn.Dense(vocab_size)

    def initialize(self, *args, **kwargs):
        _check_vocab(self.vocab_size, type(self.rnn).__name__.lower(), initializing=True)
        return super().initialize(*args, **kwargs)

    def begin_state(self, batch_size: int, ctx=None) -> list:
        return self.rnn.begin_state(batch_size=batch_size, ctx=ctx or mx.cpu())

    def forward(self, X, state=None):
        if state is None:
            state = self.begin_state(X.shape[0], X.context)
        return super().forward(X, state)

    def hybrid_forward(self, F, X, state):
        Y, state = self.rnn(F.one_hot(F.transpose(X), self.vocab_size), state)
        # (num_steps, batch_size, H) -> (num_steps * batch_size, H): time-major rows, as the labels are.
        return self.dense(Y.reshape((-3, -1))), state


# The Gluon recurrent layer of each variant.
RNN_SPEC = {"rnn": rnn.RNN, "gru": rnn.GRU, "lstm": rnn.LSTM}


def gluon_rnn(kind: str, vocab_size: Optional[int], num_hiddens: int, num_layers: int):
    if num_layers < 1:
        raise ValueError(f"model {kind}: num_layers: got {num_layers}; allowed: an integer >= 1")
    vocab_size = _check_vocab(vocab_size, kind)
    layer = RNN_SPEC[kind](num_hiddens, num_layers=num_layers)
    return RNNModel(layer, vocab_size)


@models.register("rnn", kind="rnn")
@models.register("gru", kind="gru")
@models.register("lstm", kind="lstm")
def rnn_model(*, kind: str, vocab_size: Optional[int] = None, num_hiddens: int = 256, num_layers: int = 1):
    """``rnn`` (``rnn.RNN``, relu: Gluon's default, as the book leaves it), ``gru`` (``rnn.GRU``) or ``lstm``
    (``rnn.LSTM``), then ``Dense(vocab_size)``."""
    return gluon_rnn(kind, vocab_size, num_hiddens, num_layers)


def predict_rnn(net, prefix: str, num_chars: int, idx_to_char, char_to_idx, ctx) -> str:
    """The book's ``predict_rnn``: read ``prefix`` one character at a time, then append ``num_chars`` characters,
    each the most likely one given the state so far (greedy)."""
    if not prefix:
        raise ValueError("a prefix to generate from must hold at least one character")
    unknown = sorted({c for c in prefix if c not in char_to_idx})
    if unknown:
        raise KeyError(f"prefix {prefix!r}: {', '.join(map(repr, unknown))} not in the vocabulary of the training text")
    state = net.begin_state(1, ctx)
    output = [char_to_idx[prefix[0]]]
    with autograd.predict_mode():
        for t in range(num_chars + len(prefix) - 1):
            X = nd.array([[output[-1]]], ctx=ctx)
            Y, state = net(X, state)
            if t < len(prefix) - 1:
                output.append(char_to_idx[prefix[t + 1]])
            else:
                output.append(int(Y.argmax(axis=1).asscalar()))
    return "".join(idx_to_char[i] for i in output)
