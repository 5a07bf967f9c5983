"""The training loops `make bench` compares, each run in a fresh process by ``run.py --one KIND``.

Every contender trains the same network on the same Fashion-MNIST images with the same batch, optimizer and
thread count, and reports the training phase alone (forward, backward, update) per epoch, as mxlab's
``perf/samples_per_second`` does. Data is preloaded by all but the book, whose loop is the point.
"""
from __future__ import annotations

import os
import tempfile
import time

LENET = "lenet"
RESNET = "resnet"
RESNET_OVERRIDES = ["data.resize=null"]   # ResNet-18 at 28x28, the setting


def threads() -> int:
    """MXNet's OpenMP threads: OMP_NUM_THREADS, else half the CPUs (it assumes hyper-threads; 1 of 2 here)."""
    return int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 2) // 2))


def _arrays(limit: int):
    from mxlab.data.fashion_mnist import load_arrays

    arrays, _ = load_arrays()
    return arrays["train-images-idx3-ubyte"][:limit], arrays["train-labels-idx1-ubyte"][:limit]


def book(limit: int, epochs: int) -> dict:
    """The book's ``train_ch5``: a Gluon ``DataLoader`` with ``ToTensor`` per example, an un-hybridized LeNet,
    and ``.asscalar()`` on the loss and accuracy of every batch."""
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.gluon.data.vision import transforms

    from mxlab.spec import load_spec
    from mxlab.train import build_net, seed_everything

    spec = load_spec(LENET)
    X, y = _arrays(limit)
    dataset = gluon.data.ArrayDataset(mx.nd.array(X[:, :, :, None], dtype="uint8"), y.astype("float32"))
    loader = gluon.data.DataLoader(dataset.transform_first(transforms.ToTensor()), spec.data.batch_size,
                                   shuffle=True)
    seed_everything(spec.train.seed)
    net = build_net(spec)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": spec.train.lr})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    rates, cpu_rates = [], []
    for _ in range(epochs):
        train_l_sum, train_acc_sum, n, start, cpu = 0.0, 0.0, 0, time.perf_counter(), time.process_time()
        for Xb, yb in loader:
            with autograd.record():
                y_hat = net(Xb)
                l = loss(y_hat, yb).sum()
            l.backward()
            trainer.step(spec.data.batch_size)
            train_l_sum += l.asscalar()
            train_acc_sum += (y_hat.argmax(axis=1) == yb).sum().asscalar()
            n += yb.shape[0]
        rates.append(n / (time.perf_counter() - start))
        cpu_rates.append(n / (time.process_time() - cpu))
    return {"epoch_samples_per_second": rates, "epoch_samples_per_cpu_second": cpu_rates,
            "train/loss": train_l_sum / n}


def mxlab(limit: int, epochs: int, tracked: bool = False, experiment: str = LENET, overrides=()) -> dict:
    """The code path of ``mxlab run``: :func:`mxlab.runner.run`, untracked or into a throwaway MLflow store.

    ``callback_seconds`` is the time the callbacks (progress, checkpoint, MLflow) spend inside the training
    phase, measured around their ``on_batch_end``: the in-epoch cost of tracking and progress."""
    from mxlab import heap, runner
    from mxlab.spec import load_spec

    spent = [0.0]
    chain = runner._Training.chain

    def timed_chain(self, logger=None):
        callbacks = chain(self, logger)
        for cb in callbacks:
            inner = cb.on_batch_end

            def on_batch_end(state, i, n, inner=inner):
                start = time.perf_counter()
                inner(state, i, n)
                spent[0] += time.perf_counter() - start
            cb.on_batch_end = on_batch_end
        return callbacks

    runner._Training.chain = timed_chain
    from mxlab import train

    cpu_rates, train_epoch = [], train.train_epoch

    def timed_epoch(*args, **kwargs):   # measures only: the process's CPU seconds of the training phase
        cpu = time.process_time()
        metrics, count, seconds = train_epoch(*args, **kwargs)
        cpu_rates.append(count / (time.process_time() - cpu))
        return metrics, count, seconds

    train.train_epoch = timed_epoch
    spec = load_spec(experiment, [f"data.limit={limit}", f"train.epochs={epochs}", "train.device=cpu",
                                  *overrides])
    start = time.perf_counter()
    # As `mxlab run` holds its process's collector until training starts (mxlab.heap).
    with tempfile.TemporaryDirectory() as tmp, heap.held():
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        history = runner.run(spec, track=tracked, progress=tracked).history
    wall = time.perf_counter() - start
    train_seconds = sum(limit / h["perf/samples_per_second"] for h in history)
    return {"epoch_samples_per_second": [h["perf/samples_per_second"] for h in history],
            "epoch_samples_per_cpu_second": cpu_rates, "wall_seconds": wall, "train/loss": history[-1]["train/loss"],
            "callback_share": spent[0] / train_seconds}


def _torch_lenet(nn):
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.Sigmoid(), nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.MaxPool2d(2, 2), nn.Flatten(),
        nn.Linear(256, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def _torch_resnet18(nn):
    class Residual(nn.Module):
        def __init__(self, cin, cout, use_1x1conv=False, strides=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=strides)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.conv3 = nn.Conv2d(cin, cout, 1, stride=strides) if use_1x1conv else None
            self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

        def forward(self, X):
            Y = nn.functional.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            return nn.functional.relu(Y + (self.conv3(X) if self.conv3 is not None else X))

    layers = [nn.Conv2d(1, 64, 7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512)):
        first = i == 0
        layers += [Residual(cin, cout, use_1x1conv=not first, strides=1 if first else 2), Residual(cout, cout)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))


def torch_eager(limit: int, epochs: int, experiment: str = LENET) -> dict:
    """PyTorch eager with the same network, Xavier-uniform init, plain SGD, batch and thread count; uint8 images
    preloaded, shuffled by an index and scaled per batch, loss and accuracy summed on the device and read once
    per epoch, as mxlab does."""
    import torch
    from torch import nn

    from mxlab.spec import load_spec

    torch.set_num_threads(threads())
    spec = load_spec(experiment)
    torch.manual_seed(spec.train.seed)
    net = _torch_lenet(nn) if experiment == LENET else _torch_resnet18(nn)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    X, y = _arrays(limit)
    X, y = torch.from_numpy(X.copy()).unsqueeze(1), torch.from_numpy(y.astype("int64"))
    opt = torch.optim.SGD(net.parameters(), lr=spec.train.lr)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    bs, rates, cpu_rates = spec.data.batch_size, [], []
    net.train()
    for _ in range(epochs):
        index = torch.randperm(limit)
        loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.int64)
        start, cpu = time.perf_counter(), time.process_time()
        for s in range(0, limit, bs):
            batch = index[s:s + bs]
            Xb, yb = X[batch].float().div_(255), y[batch]
            y_hat = net(Xb)
            l = loss_fn(y_hat, yb)
            opt.zero_grad(set_to_none=True)
            (l / bs).backward()   # as trainer.step(batch_size): the gradient of the batch mean
            opt.step()
            with torch.no_grad():
                loss_sum += l.detach()
                correct += (y_hat.argmax(1) == yb).sum()
        rates.append(limit / (time.perf_counter() - start))
        cpu_rates.append(limit / (time.process_time() - cpu))
    return {"epoch_samples_per_second": rates, "epoch_samples_per_cpu_second": cpu_rates,
            "train/loss": float(loss_sum) / limit}


KINDS = {
    "book": lambda limit, epochs: book(limit, epochs),
    "mxlab": lambda limit, epochs: mxlab(limit, epochs),
    "mxlab+mlflow": lambda limit, epochs: mxlab(limit, epochs, tracked=True),
    "torch": lambda limit, epochs: torch_eager(limit, epochs),
    "mxlab-resnet": lambda limit, epochs: mxlab(limit, epochs, experiment=RESNET, overrides=RESNET_OVERRIDES),
    "torch-resnet": lambda limit, epochs: torch_eager(limit, epochs, experiment=RESNET),
}
