"""`make bench`: mxlab's training path against the book's own loop, side by side in one run, as ratios.

Each contender runs in a fresh process (so peak memory is its own) on the same data, model and seed:
- book: the book's ``train_ch5`` loop: a Gluon ``DataLoader`` with ``ToTensor`` per example, an
  un-hybridized LeNet, and ``.asscalar()`` on the loss and accuracy of every batch;
- mxlab: ``mxlab.runner.run(spec, track=False)``, the path of ``mxlab run``: device-resident batches, hybridized net, sums read once per epoch;
- mxlab+mlflow: the same with ``track=True`` (per-epoch metrics, checkpoints and artifacts), for the
  tracking overhead.
It prints measurements; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

EXPERIMENT = "lenet"


def book_loop(limit: int, epochs: int) -> dict:
    import mxnet as mx
    from mxnet import autograd, gluon
    from mxnet.gluon.data.vision import transforms

    from mxlab.data.fashion_mnist import load_arrays
    from mxlab.spec import load_spec
    from mxlab.train import build_net, seed_everything

    spec = load_spec(EXPERIMENT)
    arrays, _ = load_arrays()
    X = arrays["train-images-idx3-ubyte"][:limit, :, :, None]   # HWC, as the book's dataset yields
    y = arrays["train-labels-idx1-ubyte"][:limit].astype("float32")
    dataset = gluon.data.ArrayDataset(mx.nd.array(X, dtype="uint8"), y)
    loader = gluon.data.DataLoader(dataset.transform_first(transforms.ToTensor()), spec.data.batch_size,
                                   shuffle=True)
    seed_everything(spec.train.seed)
    net = build_net(spec)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": spec.train.lr})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    seconds, n = 0.0, 0
    for _ in range(epochs):
        train_l_sum, train_acc_sum, start = 0.0, 0.0, time.perf_counter()
        for Xb, yb in loader:
            with autograd.record():
                y_hat = net(Xb)
                l = loss(y_hat, yb).sum()
            l.backward()
            trainer.step(spec.data.batch_size)
            train_l_sum += l.asscalar()
            train_acc_sum += (y_hat.argmax(axis=1) == yb).sum().asscalar()
            n += yb.shape[0]
        seconds += time.perf_counter() - start
    return {"samples_per_second": n / seconds, "train/loss": train_l_sum / limit}


def mxlab_fit(limit: int, epochs: int, tracked: bool) -> dict:
    """The same code path as ``mxlab run``: :func:`mxlab.runner.run`, with or without MLflow."""
    from mxlab.runner import run
    from mxlab.spec import load_spec

    spec = load_spec(EXPERIMENT, [f"data.limit={limit}", f"train.epochs={epochs}", "train.device=cpu"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        history = run(spec, track=tracked, progress=False).history
    wall = time.perf_counter() - start
    return {"samples_per_second": sum(h["perf/samples_per_second"] for h in history) / len(history),
            "epoch_seconds": sum(h["perf/epoch_seconds"] for h in history) / len(history),
            "wall_seconds": wall, "train/loss": history[-1]["train/loss"]}


def one(kind: str, limit: int, epochs: int) -> None:
    result = {"book": lambda: book_loop(limit, epochs),
              "mxlab": lambda: mxlab_fit(limit, epochs, tracked=False),
              "mxlab+mlflow": lambda: mxlab_fit(limit, epochs, tracked=True)}[kind]()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=60000, help="training examples (default: all 60,000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--one", choices=["book", "mxlab", "mxlab+mlflow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.limit, args.epochs)
        return 0
    print(f"LeNet on Fashion-MNIST, {args.limit} examples x {args.epochs} epochs, batch 256, one CPU context, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    results = {}
    for kind in ("book", "mxlab", "mxlab+mlflow"):
        out = subprocess.run([sys.executable, __file__, "--one", kind, "--limit", str(args.limit), "--epochs",
                              str(args.epochs)], capture_output=True, text=True, check=True)
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[kind]
        print(f"  {kind:<13} {r['samples_per_second']:>9,.0f} img/s (training phase)   peak RSS "
              f"{r['peak_rss_mb']:,.0f} MB")
    book, ours, tracked = results["book"], results["mxlab"], results["mxlab+mlflow"]
    print(f"speed-up of mxlab's loop over the book's: {ours['samples_per_second'] / book['samples_per_second']:.2f}x")
    print(f"peak memory, mxlab / book: {ours['peak_rss_mb'] / book['peak_rss_mb']:.2f}")
    print(f"MLflow tracking overhead (wall time, tracked / untracked): "
          f"{tracked['wall_seconds'] / ours['wall_seconds']:.2f}x "
          f"({tracked['wall_seconds'] - ours['wall_seconds']:.1f} s over {args.epochs} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
