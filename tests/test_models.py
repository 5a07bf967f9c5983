"""Every registered model: output shape on a tiny input, a gradient on every parameter, no NaN.

Each model family declares the smallest input its architecture accepts; a family this file does not know
fails the walk with a message saying where to declare its input, so a new family cannot slip through untested.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mxlab.models  # noqa: F401  (registers the zoo)
from mxlab.devices import import_mxnet
from mxlab.registry import models
from mxlab.workspace import import_experiment_model
from mxlab.tasks import tasks

mx = import_mxnet()
REPO = Path(__file__).resolve().parents[1]

# Models that experiment folders register themselves (experiments/<name>/model.py) are part of the zoo too.
for _folder in sorted((REPO / "experiments").glob("*/model.py")):
    import_experiment_model(_folder.parent)

BATCH = 4
VOCAB, STEPS = 7, 5
IMAGE_28 = ((1, 28, 28), (10,), "classification")
# family module -> (one example's shape, one output's shape, task): the smallest input the family accepts.
FAMILY_INPUTS = {
    "mxlab.models.linear": IMAGE_28,
    "mxlab.models.lenet": IMAGE_28,
    "mxlab.models.mlp": IMAGE_28,
    "mxlab.models.batchnorm": IMAGE_28,
    "mxlab.models.alexnet": ((1, 67, 67), (10,), "classification"),   # 11x11/4 conv then three 3x3/2 pools
    "mxlab.models.nin": ((1, 67, 67), (10,), "classification"),
    "mxlab.models.vgg": ((1, 32, 32), (10,), "classification"),       # five 2x2 pools
    "mxlab.models.googlenet": ((1, 32, 32), (10,), "classification"),
    "mxlab.models.resnet": ((1, 32, 32), (10,), "classification"),
    "mxlab.models.densenet": ((1, 32, 32), (10,), "classification"),
    "mxlab_experiments.custom_block.model": IMAGE_28,
    # Character language models: a (batch, steps) batch of token indices, one score per token and step.
    "mxlab.models.rnn": ((STEPS,), (VOCAB,), "language_model"),
}
# Models whose input is not a family default.
NAME_INPUTS = {
    "linreg": ((2,), (1,), "regression"),
    "linreg_scratch": ((2,), (1,), "regression"),
}


def family(name: str) -> str:
    builder = models.get(name)
    return getattr(builder, "fn", builder).__module__


def case(name: str):
    if name in NAME_INPUTS:
        return NAME_INPUTS[name]
    module = family(name)
    if module not in FAMILY_INPUTS:
        pytest.fail(f"model {name!r} comes from {module}, which has no tiny input declared: add it to "
                    f"FAMILY_INPUTS in {__file__}")
    return FAMILY_INPUTS[module]


def build(name: str, task_name: str):
    mx.random.seed(0)
    net = models.get(name)(**({"vocab_size": VOCAB} if task_name == "language_model" else {}))
    if getattr(net, "scratch", False):
        net.initialize(ctx=[mx.cpu()])
    else:
        net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    return net


def trainable(net) -> dict:
    """Parameter name -> (value, gradient) for everything the updater steps."""
    if getattr(net, "scratch", False):
        return {name: (p, p.grad) for name, p in net.params.items()}
    return {name: (p.data(), p.grad()) for name, p in net.collect_params().items() if p.grad_req != "null"}


def first(output):
    """A recurrent network returns (scores, state); the scores are what is checked."""
    return output[0] if isinstance(output, (tuple, list)) else output


def finite(a) -> bool:
    return bool(np.isfinite(a.asnumpy()).all())


@pytest.mark.parametrize("name", models.names())
def test_model_shape_gradient_and_finiteness(name):
    example_shape, output_shape, task_name = case(name)
    net = build(name, task_name)
    X = mx.nd.random.uniform(shape=(BATCH, *example_shape))
    if task_name == "language_model":
        X = mx.nd.random.randint(0, VOCAB, shape=(BATCH, STEPS)).astype("float32")
        y = mx.nd.random.randint(0, VOCAB, shape=(BATCH, STEPS)).astype("float32")
    elif task_name == "classification":
        y = mx.nd.array(np.arange(BATCH) % output_shape[0])
    else:
        y = mx.nd.random.normal(shape=(BATCH,))
    loss_fn = tasks.get(task_name)().loss(net)
    with mx.autograd.record():
        y_hat = first(net(X))
        loss = loss_fn(y_hat, y)
    loss.backward()
    # A language model scores every step of every sequence: (steps * batch, vocab), as the book reshapes it.
    expected = (STEPS * BATCH, VOCAB) if task_name == "language_model" else (BATCH, *output_shape)
    assert y_hat.shape == expected, f"{name}: expected output shape {expected} for input {X.shape}, got {y_hat.shape}"
    assert finite(y_hat) and finite(loss), f"{name}: non-finite output or loss"
    params = trainable(net)
    assert params, f"{name}: no trainable parameters"
    for pname, (value, grad) in params.items():
        assert grad.shape == value.shape, f"{name}: {pname} gradient shape {grad.shape} != {value.shape}"
        assert finite(grad), f"{name}: {pname} has a non-finite gradient"
        assert float(grad.abs().sum().asscalar()) > 0, f"{name}: {pname} got no gradient"
    # Inference mode (dropout off, batch norm on moving statistics) gives the same shape, finite.
    y_eval = first(net(X))
    assert y_eval.shape == y_hat.shape and finite(y_eval), f"{name}: inference output {y_eval.shape} or NaN"


def test_every_zoo_family_is_walked():
    from mxlab.models import FAMILIES

    for fam in FAMILIES:
        module = f"mxlab.models.{fam}"
        assert module in FAMILY_INPUTS, f"family {fam} has no tiny input declared"


# ---------------------------------------------------------------- options and their errors

def test_mlp_exposes_one_dropout_rate_per_hidden_layer():
    net = models.get("mlp")(num_hiddens=(256, 256), dropout1=0.2, dropout2=0.5)
    rates = [layer._rate for layer in net if isinstance(layer, mx.gluon.nn.Dropout)]
    assert rates == [0.2, 0.5]
    assert not any(isinstance(layer, mx.gluon.nn.Dropout) for layer in models.get("mlp")())
    with pytest.raises(ValueError, match="model.dropout2.*one hidden layer"):
        models.get("mlp")(num_hiddens=(256,), dropout2=0.5)
    with pytest.raises(ValueError, match=r"model.dropout1: got 1.0; allowed: a number in \[0, 1\)"):
        models.get("mlp_scratch")(dropout1=1.0)
    with pytest.raises(ValueError, match="model.num_hiddens: got \\[\\]"):
        models.get("mlp_scratch")(num_hiddens=())


def test_scratch_dropout_is_active_only_while_training():
    net = models.get("mlp_scratch")(num_hiddens=(64, 64), dropout1=0.5, dropout2=0.5)
    net.initialize(ctx=[mx.cpu()])
    X = mx.nd.random.uniform(shape=(8, 1, 28, 28))
    np.testing.assert_array_equal(net(X).asnumpy(), net(X).asnumpy())
    with mx.autograd.record():
        a, b = net(X), net(X)
    assert not np.allclose(a.asnumpy(), b.asnumpy())


def test_scratch_dropout_function_keeps_the_expectation():
    from mxlab.models.mlp import dropout

    mx.random.seed(0)
    X = mx.nd.ones((200, 200))
    out = dropout(X, 0.5).asnumpy()
    assert set(np.unique(out)) <= {0.0, 2.0}
    assert abs(out.mean() - 1.0) < 0.02
    np.testing.assert_array_equal(dropout(X, 0.0).asnumpy(), X.asnumpy())
    assert dropout(X, 1.0).asnumpy().sum() == 0


@pytest.mark.parametrize("builder, options, message", [
    ("vgg", {"channel_divisor": 3}, "model.channel_divisor: got 3"),
    ("vgg", {"depth": 12}, "model.depth: got 12; allowed: 11, 13, 16, 19"),
    ("resnet", {"depth": 50}, "model.depth: got 50; allowed: 18, 34"),
    ("densenet", {"num_convs": ()}, "model.num_convs: got \\[\\]"),
    ("densenet", {"growth_rate": 0}, "model.growth_rate: got 0"),
    ("alexnet", {"dropout": 1.5}, "model.dropout: got 1.5"),
    ("linreg", {"init_sigma": -1.0}, "model.init_sigma: got -1.0"),
])
def test_builders_refuse_bad_options(builder, options, message):
    with pytest.raises(ValueError, match=message):
        models.get(builder)(**options)


def test_vgg_variants_follow_the_table_and_divide_channels():
    from mxlab.models.vgg import VGG_SPECS

    net = models.get("vgg11")()
    convs = [layer for block in net[:5] for layer in block if isinstance(layer, mx.gluon.nn.Conv2D)]
    assert [c._channels for c in convs] == [ch // 4 for n, ch in VGG_SPECS[11] for _ in range(n)]
    assert [c._channels for c in convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert len([layer for block in models.get("vgg16")(channel_divisor=1)[:5] for layer in block
                if isinstance(layer, mx.gluon.nn.Conv2D)]) == 13


def test_resnet18_has_shortcut_convolutions_where_shapes_change():
    net = models.get("resnet18")()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 1, 32, 32)))
    residuals = [block for stage in net[4:8] for block in stage]
    assert len(residuals) == 8
    assert [r.conv3 is not None for r in residuals] == [False, False, True, False, True, False, True, False]


def test_densenet_channels_grow_and_transitions_halve_them():
    net = models.get("densenet")(growth_rate=8, num_convs=(2, 2), num_channels=16)
    net.initialize(mx.init.Xavier())
    X = mx.nd.zeros((1, 1, 32, 32))
    for layer in net[:4]:   # stem: conv, bn, relu, pool -> (16, 8, 8)
        X = layer(X)
    X = net[4](X)
    assert X.shape[1] == 16 + 2 * 8          # dense block: + num_convs * growth_rate
    X = net[5](X)
    assert X.shape[1:] == (16, 4, 4)        # transition: channels // 2, map / 2
