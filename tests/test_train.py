"""The fit loop on real data: data-parallel contexts, seeded reproducibility, NaN handling, resumable state."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest

from mxlab import runner
from mxlab.callbacks import Checkpoint
from mxlab.data import load_data
from mxlab.spec import load_spec
from mxlab.train import NonFiniteLoss, fit, make_updater, prepare_net

SMALL = ["data.limit=512", "data.batch_size=64", "train.epochs=2"]


def train(name, overrides, ctx_list):
    """The runner's own path, untracked, on the given CPU contexts."""
    device = "cpu:" + ",".join(str(c.device_id) for c in ctx_list)
    result = runner.run(load_spec(name, [*overrides, f"train.device={device}"]), track=False, progress=False)
    return result.net, result.history


def without_perf(history):
    return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in history]


def test_two_contexts_match_one(workspace):
    """split_and_load over [cpu(0), cpu(1)] feeding one Trainer computes the same SGD steps as one context."""
    net2, two = train("lenet", SMALL + ["train.lr=0.5"], [mx.cpu(0), mx.cpu(1)])
    _, one = train("lenet", SMALL + ["train.lr=0.5"], [mx.cpu(0)])
    for a, b in zip(without_perf(two), without_perf(one)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=2e-4), key
    for param in net2.collect_params().values():   # both copies stayed identical
        copies = param.list_data()
        assert [c.context for c in copies] == [mx.cpu(0), mx.cpu(1)]
        np.testing.assert_allclose(copies[0].asnumpy(), copies[1].asnumpy(), rtol=0, atol=0)


def test_a_batch_smaller_than_the_device_count(workspace):
    """257 examples in batches of 256: the last batch holds one example for two contexts. It is left out of
    training (an idle context would give the Trainer a stale gradient) and still counts in evaluation."""
    net, history = train("lenet", ["data.limit=257", "train.epochs=1"], [mx.cpu(0), mx.cpu(1)])
    assert np.isfinite(history[0]["train/loss"]) and np.isfinite(history[0]["test/acc"])
    assert history[0]["perf/samples_per_second"] > 0
    for param in net.collect_params().values():
        copies = param.list_data()
        np.testing.assert_array_equal(copies[0].asnumpy(), copies[1].asnumpy())


def test_same_seed_same_metrics(workspace):
    _, a = train("softmax", SMALL, [mx.cpu()])
    _, b = train("softmax", SMALL, [mx.cpu()])
    _, c = train("softmax", SMALL + ["train.seed=7"], [mx.cpu()])
    assert without_perf(a) == without_perf(b)
    assert without_perf(a) != without_perf(c)


def test_metrics_per_epoch_and_learning(workspace):
    _, history = train("softmax_scratch", ["data.limit=2000", "train.epochs=3", "data.val_fraction=0.2"],
                       [mx.cpu()])
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
                               "perf/epoch_seconds", "perf/samples_per_second"}
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["test/acc"] > 0.5


def test_regression_recovers_true_parameters(workspace):
    net, history = train("linreg", [], [mx.cpu()])
    assert history[-1]["train/loss"] < 1e-3
    w = net.collect_params()[[k for k in net.collect_params() if k.endswith("weight")][0]].data().asnumpy()
    np.testing.assert_allclose(w.ravel(), [2, -3.4], atol=0.02)


def test_non_finite_loss_raises(workspace):
    with pytest.raises(NonFiniteLoss, match="train/loss is (nan|inf)"):
        train("linreg_scratch", ["train.lr=1e6", "train.epochs=2"], [mx.cpu()])


def test_scratch_model_refuses_several_devices(workspace):
    with pytest.raises(ValueError, match="from scratch.*one\\s+device"):
        train("softmax_scratch", SMALL, [mx.cpu(0), mx.cpu(1)])


@pytest.mark.parametrize("name, optimizer", [("lenet", "momentum"), ("lenet", "adam")])
def test_checkpoint_resumes_as_if_never_stopped(workspace, tmp_path, name, optimizer):
    """Params, optimizer state and the epoch saved after epoch 1 continue into the same epoch 2."""
    overrides = SMALL + [f"train.optimizer={optimizer}", "train.lr=0.01"]
    _, straight = train(name, overrides, [mx.cpu()])

    folder = tmp_path / "ckpt"
    spec = load_spec(name, overrides)
    one_epoch = spec.replace(**{"train.epochs": 1})
    bundle = load_data(one_epoch, mx.cpu())
    net = prepare_net(one_epoch, bundle, [mx.cpu()])
    fit(one_epoch, net, bundle, [mx.cpu()], [Checkpoint(folder)])

    record = json.loads((folder / "last.json").read_text())
    resumed_net = prepare_net(spec, bundle, [mx.cpu()])
    resumed_net.load_parameters(str(folder / "last.params"), ctx=[mx.cpu()])
    updater = make_updater(resumed_net, spec.train, [mx.cpu()])
    updater.load_states(str(folder / "last.states"))
    resumed = fit(spec, resumed_net, load_data(spec, mx.cpu()), [mx.cpu()], start_epoch=record["epoch"],
                  updater=updater, history=record["history"])
    assert [h["epoch"] for h in resumed] == [1, 2]
    assert without_perf(resumed)[0] == without_perf(straight)[0]
    assert without_perf(resumed)[1] == pytest.approx(without_perf(straight)[1], rel=1e-6)


def test_optimizer_state_lands_on_the_same_parameters_in_any_copy_of_the_network(workspace, tmp_path):
    """Gluon names layers from process-wide counters (dense9, dense10, ...), so copies of one network built later
    in a process sort their parameter names differently. The optimizer state is kept by parameter position: it
    must follow the network's structure, not the sorted names, or a resumed copy gets another layer's state."""
    spec = load_spec("lenet", SMALL + ["train.optimizer=momentum", "train.epochs=1"])
    bundle = load_data(spec, mx.cpu())
    saver = prepare_net(spec, bundle, [mx.cpu()])
    fit(spec, saver, bundle, [mx.cpu()], [Checkpoint(tmp_path)])
    results = []
    for _ in range(10):   # the layer counters advance 2 and 3 per copy: some copy's names cross a power of ten
        copy = prepare_net(spec, bundle, [mx.cpu()])
        copy.load_parameters(str(tmp_path / "last.params"), ctx=[mx.cpu()])
        updater = make_updater(copy, spec.train, [mx.cpu()])
        updater.load_states(str(tmp_path / "last.states"))
        fit(spec.replace(**{"train.epochs": 2}), copy, bundle, [mx.cpu()], start_epoch=1, updater=updater,
            history=[])
        results.append(np.concatenate([p.data().asnumpy().ravel() for p in copy.collect_params().values()]))
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])


def test_scratch_sgd_clips_the_mean_gradient_to_the_threshold():
    from mxlab.models.scratch import ScratchNet, ScratchSGD

    class Tiny(ScratchNet):
        def __init__(self):
            super().__init__()
            self.declare("w", (3, 2))
            self.declare("b", (2,), "zeros")

    for clip, expected_norm in ((0.01, 0.01), (100.0, None)):
        net = Tiny()
        net.initialize(ctx=[mx.cpu()])
        net.params["w"].grad[:] = 3.0
        net.params["b"].grad[:] = 4.0
        before = {k: v.copy() for k, v in net.params.items()}
        ScratchSGD(net, lr=1.0, wd=0.0, clip=clip).step(10)
        moved = np.concatenate([(before[k] - net.params[k]).asnumpy().ravel() for k in ("w", "b")])
        unclipped = np.linalg.norm(np.r_[np.full(6, 3.0), np.full(2, 4.0)]) / 10   # the mean gradient's norm
        assert np.linalg.norm(moved) == pytest.approx(expected_norm or unclipped, rel=1e-5)
