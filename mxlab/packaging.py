"""What the packaged model must know beyond its weights: the task, how raw inputs become the network's input,
the class names or the vocabulary, and an input example. MLflow-free: the runner hands the result to
:func:`mxlab.tracking.log_pyfunc_model`, and :mod:`mxlab.pyfunc_model` reads it back as ``model.json``.
"""
from __future__ import annotations

import numpy as np

# The publisher's names, in label order (https://github.com/zalandoresearch/fashion-mnist).
CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}
GENERATE_LENGTH = 50   # characters a language model appends to each prefix unless `length` is given


def _image_affine(loader, raw_shape) -> tuple[float, float]:
    """The training transform after scaling to [0, 1] and resizing is ``a * x + b`` (identity, or normalising by
    a mean and standard deviation): read off from two constant images, whatever the dataset computed."""
    from mxlab.devices import import_mxnet

    mx = import_mxnet()
    if loader.transform is None:
        return 1.0, 0.0
    zeros = loader.transform(mx.nd.zeros((1, *raw_shape), ctx=loader.ctx, dtype=loader.X.dtype))
    ones = loader.transform(mx.nd.full((1, *raw_shape), 255, ctx=loader.ctx, dtype=loader.X.dtype))
    b = float(zeros.asnumpy().mean())
    return float(ones.asnumpy().mean()) - b, b


def describe(spec, bundle, net) -> tuple[dict, object]:
    """``(card, input_example)``: the card is written as ``model.json`` beside the network."""
    card = {"task": spec.task, "experiment": spec.name, "dataset": spec.data.name,
            "input_shape": [int(d) for d in bundle.input_shape]}
    if spec.task == "language_model":
        vocab = list(bundle.extra["idx_to_char"])
        known = set(vocab)
        prefixes = [p for p in spec.train.sample_prefixes if p and set(p) <= known][:2] or [vocab[-1]]
        card.update(vocab=vocab, generate_length=GENERATE_LENGTH)
        return card, prefixes
    source = bundle.test or bundle.val or bundle.train
    raw = source.X[:2].asnumpy()
    if spec.task == "classification" and raw.ndim == 4:
        scale, shift = _image_affine(source, raw.shape[1:])
        card["image"] = {"scale": scale, "shift": shift, "channels": int(raw.shape[1])}
        # An own loss means the network ends in a softmax itself (the book's scratch models).
        card["outputs"] = "probabilities" if getattr(net, "loss", None) is not None else "scores"
        card["labels"] = CLASS_NAMES.get(spec.data.name) or [str(i) for i in range(_num_classes(spec, net))]
        return card, raw.reshape(len(raw), -1).astype(np.uint8)   # the natural form: N x H*W, 0-255
    return card, raw.astype(np.float32)


def _num_classes(spec, net) -> int:
    return int(spec.model.options.get("num_outputs") or 10)


CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def _source(spec) -> str:
    if spec.data.name == "fashion_mnist":
        from mxlab.data.fashion_mnist import locate

        return str(locate("train-images-idx3-ubyte", download=False).parent)
    options = " ".join(f"{k}={v}" for k, v in sorted(spec.data.options.items()) if v is not None)
    return f"{spec.data.name} {options}".strip()


def dataset_inputs(spec, bundle) -> list[dict]:
    """One MLflow dataset input per split: the digest is the SHA-256 of the split's content as trained on
    (after ``limit`` and ``val_fraction``), so equal digests mean equal data."""
    import hashlib

    source = _source(spec)
    out = []
    for split, loader in bundle.splits().items():
        arrays = [a for a in (getattr(loader, "X", None), getattr(loader, "y", None), getattr(loader, "corpus", None))
                  if a is not None]
        digest = hashlib.sha256()
        for array in arrays:
            digest.update(array.asnumpy().tobytes())
        size = getattr(loader, "num_examples", None) or getattr(loader, "num_chars", 0)
        out.append({"name": f"{spec.data.name}-{split}", "digest": digest.hexdigest()[:16], "source": source,
                    "num_examples": int(size), "context": CONTEXTS[split],
                    "unit": "characters" if hasattr(loader, "num_chars") else "examples"})
    return out
