"""The book's checks that need no long training: twins that must agree, worked examples, and short real runs.

- scratch and Gluon softmax give the same loss from the same weights;
- scratch and Gluon batch norm give the same output in training and in inference mode;
- the multi-input-channel correlation example gives [[56, 72], [104, 120]]; a 1x1 convolution is a per-pixel
  dense layer;
- custom_block: deferred initialisation, and a save_parameters / load_parameters round trip after training;
- weight decay: weight_decay_scratch and weight_decay train through mxlab.train and report l2_norm_w.
"""
from __future__ import annotations

import numpy as np
import pytest

import mxlab.models  # noqa: F401  (registers the zoo)
from mxlab import runner
from mxlab.data import load_data
from mxlab.devices import import_mxnet
from mxlab.registry import models
from mxlab.spec import load_spec
from mxlab.train import build_net, prepare_net

mx = import_mxnet()
nd, autograd, nn = mx.nd, mx.autograd, mx.gluon.nn


# ---------------------------------------------------------------- scratch and Gluon twins

def test_scratch_and_gluon_softmax_give_the_same_loss_from_the_same_weights():
    mx.random.seed(0)
    scratch = models.get("softmax_scratch")()
    scratch.initialize(ctx=[mx.cpu()])
    scratch.params["W"][:] = nd.random.normal(scale=0.1, shape=scratch.params["W"].shape)
    scratch.params["b"][:] = nd.random.normal(scale=0.1, shape=scratch.params["b"].shape)
    gluon_net = models.get("softmax")()
    gluon_net.initialize()
    X = nd.random.uniform(shape=(16, 1, 28, 28))
    y = nd.array(np.arange(16) % 10)
    gluon_net(X)   # fix the deferred shapes before copying the weights in
    dense = gluon_net[1]
    dense.weight.set_data(scratch.params["W"].T)   # Dense stores (outputs, inputs)
    dense.bias.set_data(scratch.params["b"])

    scratch_loss = scratch.loss(scratch(X), y)
    gluon_loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(gluon_net(X), y)
    np.testing.assert_allclose(scratch_loss.asnumpy(), gluon_loss.asnumpy(), rtol=1e-5, atol=1e-6)
    assert float(scratch_loss.mean().asscalar()) > 0.5   # the weights are not trivially right


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (8, 6)], ids=["conv", "dense"])
def test_scratch_and_gluon_batch_norm_agree_in_training_and_inference(shape):
    from mxlab.models.batchnorm import BatchNorm

    mx.random.seed(0)
    features = shape[1]
    scratch = BatchNorm(features, num_dims=len(shape))
    gluon_bn = nn.BatchNorm(in_channels=features)   # momentum 0.9, eps 1e-5, as the scratch layer
    scratch.initialize()
    gluon_bn.initialize()
    gamma = nd.random.uniform(0.5, 1.5, shape=(features,))
    beta = nd.random.normal(shape=(features,))
    scratch.gamma.set_data(gamma.reshape(scratch.gamma.shape))
    scratch.beta.set_data(beta.reshape(scratch.beta.shape))
    gluon_bn.gamma.set_data(gamma)
    gluon_bn.beta.set_data(beta)

    for step in range(3):
        X = nd.random.normal(loc=step, scale=2.0, shape=shape)
        with autograd.record():   # training mode: batch statistics
            ours, theirs = scratch(X), gluon_bn(X)
            total = theirs.sum() + ours.sum()
        # Gluon's operator updates its moving averages in the backward pass; ours in the forward.
        total.backward()
        np.testing.assert_allclose(ours.asnumpy(), theirs.asnumpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=f"training mode, step {step}")
    np.testing.assert_allclose(scratch.moving_mean.data().asnumpy().ravel(),
                               gluon_bn.running_mean.data().asnumpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scratch.moving_var.data().asnumpy().ravel(),
                               gluon_bn.running_var.data().asnumpy(), rtol=1e-4, atol=1e-5)

    X = nd.random.normal(loc=1.0, shape=shape)
    ours, theirs = scratch(X), gluon_bn(X)   # inference mode: moving averages
    np.testing.assert_allclose(ours.asnumpy(), theirs.asnumpy(), rtol=1e-4, atol=1e-4, err_msg="inference mode")
    # Inference really uses the moving averages, not this batch's statistics.
    assert abs(float(ours.mean().asscalar()) - float(beta.mean().asscalar())) > 1e-3


def test_scratch_batch_norm_gets_gradients_on_gamma_and_beta_only():
    from mxlab.models.batchnorm import BatchNorm

    bn = BatchNorm(4, num_dims=4)
    bn.initialize()
    X = nd.random.normal(shape=(2, 4, 3, 3))
    with autograd.record():
        loss = (bn(X) * nd.random.normal(shape=X.shape)).sum()
    loss.backward()
    assert float(bn.gamma.grad().abs().sum().asscalar()) > 0 and float(bn.beta.grad().abs().sum().asscalar()) > 0
    assert bn.moving_mean.grad_req == "null" and bn.moving_var.grad_req == "null"


# ---------------------------------------------------------------- convolution worked examples

def corr2d(X, K):
    """The book's two-dimensional cross-correlation, by hand."""
    h, w = K.shape
    Y = nd.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def corr2d_multi_in(X, K):
    """Correlate each input channel with its kernel, then add the channels up."""
    return nd.add_n(*[corr2d(x, k) for x, k in zip(X, K)])


def test_multi_input_channel_correlation_gives_the_books_result():
    X = nd.array([[[0, 1, 2], [3, 4, 5], [6, 7, 8]],
                  [[1, 2, 3], [4, 5, 6], [7, 8, 9]]])
    K = nd.array([[[0, 1], [2, 3]], [[1, 2], [3, 4]]])
    expected = [[56, 72], [104, 120]]
    np.testing.assert_array_equal(corr2d_multi_in(X, K).asnumpy(), expected)
    # MXNet's convolution computes the same cross-correlation.
    conv = nd.Convolution(X.expand_dims(0), K.expand_dims(0), kernel=(2, 2), num_filter=1, no_bias=True)
    np.testing.assert_array_equal(conv[0, 0].asnumpy(), expected)


def test_1x1_convolution_is_a_dense_layer_applied_per_pixel():
    mx.random.seed(0)
    X = nd.random.uniform(shape=(2, 3, 4, 5))   # (batch, channels in, height, width)
    conv = nn.Conv2D(channels=2, kernel_size=1, in_channels=3)
    dense = nn.Dense(2, in_units=3, flatten=False)
    conv.initialize(mx.init.Xavier())
    dense.initialize()
    dense.weight.set_data(conv.weight.data().reshape((2, 3)))
    dense.bias.set_data(conv.bias.data())
    per_pixel = dense(X.transpose((0, 2, 3, 1))).transpose((0, 3, 1, 2))   # channels last, dense, back
    np.testing.assert_allclose(conv(X).asnumpy(), per_pixel.asnumpy(), rtol=1e-5, atol=1e-6)
    # The book's version: a matrix product of the (out, in) kernel with the (in, h*w) pixels.
    by_matmul = nd.dot(conv.weight.data().reshape((2, 3)), X[0].reshape((3, -1))).reshape((2, 4, 5))
    np.testing.assert_allclose((conv(X)[0] - conv.bias.data().reshape((2, 1, 1))).asnumpy(),
                               by_matmul.asnumpy(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- custom_block

def test_custom_block_defers_initialisation_until_the_first_batch(workspace):
    spec = load_spec("custom_block", ["model.num_hiddens=32"])
    net = build_net(spec)
    net.initialize()
    drawn = net.weight_init.drawn
    # The hand-written layer knows its shapes: initialised at once. The hidden Dense waits for the input width.
    assert [shape for _, shape in drawn] == [(32, 10)]
    assert net.hidden.weight.shape == (32, 0)
    net(nd.zeros((2, 1, 28, 28)))
    assert [shape for _, shape in drawn] == [(32, 10), (32, 784)]
    assert net.hidden.weight.shape == (32, 784)
    bound = np.sqrt(6 / (32 + 784))
    assert np.abs(net.hidden.weight.data().asnumpy()).max() <= bound


def test_custom_block_trains_and_survives_a_save_load_round_trip(workspace, tmp_path):
    spec = load_spec("custom_block", ["train.epochs=1", "data.limit=512", "model.num_hiddens=32", "train.device=cpu"])
    ctx = [mx.cpu()]
    X, _ = next(iter(load_data(spec, ctx[0]).test))
    result = runner.run(spec, track=False, progress=False)
    net, history = result.net, result.history
    assert np.isfinite(history[-1]["train/loss"]) and 0 <= history[-1]["test/acc"] <= 1

    path = str(tmp_path / "custom.params")
    net.save_parameters(path)
    again = build_net(spec)
    again.load_parameters(path, ctx=ctx)   # no initialize(): loading fixes the deferred shapes too
    np.testing.assert_array_equal(net(X).asnumpy(), again(X).asnumpy())
    ours, theirs = net.collect_params(), again.collect_params()
    for (name, p), q in zip(sorted(ours.items()), [v for _, v in sorted(theirs.items())]):
        np.testing.assert_array_equal(p.data().asnumpy(), q.data().asnumpy(), err_msg=name)


# ---------------------------------------------------------------- weight decay

def train_spec(name: str, overrides=()):
    result = runner.run(load_spec(name, [*overrides, "train.device=cpu"]), track=False, progress=False)
    return result.net, result.history


def weight_norm(net) -> float:
    if getattr(net, "scratch", False):
        return float(net.params["w"].norm().asscalar())
    (weight,) = [p for name, p in net.collect_params().items() if name.endswith("weight")]
    return float(weight.data().norm().asscalar())


@pytest.mark.parametrize("name", ["weight_decay_scratch", "weight_decay"])
def test_weight_decay_reports_l2_norm_w_and_shrinks_it(workspace, name):
    net, decayed = train_spec(name, ["train.epochs=4"])
    assert [set(h) >= {"train/loss", "test/loss", "l2_norm_w"} for h in decayed] == [True] * 4
    assert decayed[-1]["l2_norm_w"] == pytest.approx(weight_norm(net), rel=1e-6)
    norms = [h["l2_norm_w"] for h in decayed]
    assert norms == sorted(norms, reverse=True), f"lambda=3 should shrink ||w|| every epoch: {norms}"
    # lambda=0 (the book's over-fitting run) keeps w near its N(0, 1) start: sqrt(200) ~ 14.
    _, plain = train_spec(name, ["train.epochs=4", "train.wd=0"])
    assert plain[-1]["l2_norm_w"] > 10
    assert decayed[-1]["l2_norm_w"] < 0.75 * plain[-1]["l2_norm_w"]
    assert plain[-1]["train/loss"] < plain[-1]["test/loss"]   # over-fitting: 20 examples, 200 weights


def test_gluon_weight_decay_leaves_the_bias_undecayed(workspace):
    spec = load_spec("weight_decay", ["train.epochs=1"])
    from mxlab.train import make_updater

    net = prepare_net(spec, load_data(spec, mx.cpu()), [mx.cpu()])
    make_updater(net, spec.train, [mx.cpu()])
    mults = {name.rsplit("_", 1)[-1]: p.wd_mult for name, p in net.collect_params().items()}
    assert mults == {"weight": 1.0, "bias": 0.0}
