"""`mxlab predict`: a run's logged model on test images beside their true labels, or on a picture."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mxlab.console import number


def load_model(run_id: str):
    """The run's LoggedModel through MLflow's pyfunc loader, exactly as ``mlflow models serve`` would load it."""
    import warnings

    import mlflow

    from mxlab.runs import get_run
    from mxlab.tracking import client

    c = client()
    run = get_run(c, run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise ValueError(f"run {run_id} has no logged model (it did not finish); allowed: a FINISHED run")
    from mxlab.tracking import process_tracking_uri

    # models:/ URIs resolve against the process-wide store; MLflow's type-hint advice is for the model's author.
    with process_tracking_uri(c.tracking_uri), warnings.catch_warnings(record=True):
        return mlflow.pyfunc.load_model(f"models:/{outputs[-1].model_id}")


def card(model) -> dict:
    return getattr(model.unwrap_python_model(), "card", {})


def test_images(count: int, seed: int | None = None):
    """``count`` Fashion-MNIST test images (uint8, N x 28 x 28) and labels: the first ones, or a seeded draw."""
    from mxlab.data.fashion_mnist import load_arrays

    arrays, _ = load_arrays()
    X, y = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    index = (np.random.RandomState(seed).choice(len(X), count, replace=False) if seed is not None
             else np.arange(count))
    return index, X[index], y[index]


def read_image(path: Path, side: int) -> tuple[np.ndarray, bool]:
    """A picture as one grey ``side`` x ``side`` uint8 image, light-on-dark like Fashion-MNIST: a dark-on-light
    picture (its border brighter than mid-grey) is inverted. Returns the image and whether it was inverted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            grey = picture.convert("L").resize((side, side), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"--image {path}: cannot be read as a picture ({exc}); allowed: a PNG or JPEG file") from None
    x = np.asarray(grey, dtype=np.uint8)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    inverted = float(border.mean()) > 127
    return (255 - x if inverted else x), inverted


def predict_test_images(run_id: str, count: int, seed: int | None = None, stream=None) -> list[dict]:
    stream = stream or sys.stdout
    model = load_model(run_id)
    info = card(model)
    if "labels" not in info:
        raise ValueError(f"run {run_id} is a {info.get('task', 'non-image')} model; --images needs an image "
                         f"classifier (Fashion-MNIST)")
    if not 1 <= count <= 10000:
        raise ValueError(f"--images {count}: allowed: 1 to 10000")
    index, X, y = test_images(count, seed)
    frame = model.predict(X.reshape(len(X), -1))
    rows, right = [], 0
    for i, (k, label, (_, out)) in enumerate(zip(index, y, frame.iterrows())):
        truth = info["labels"][int(label)]
        ok = out["label"] == truth
        right += ok
        rows.append({"test_index": int(k), "true": truth, "predicted": out["label"],
                     "probability": float(out[f"prob_{out['label']}"]), "correct": bool(ok)})
    width = max(len(lbl) for lbl in info["labels"])
    stream.write(f"{'test#':>6}  {'true':<{width}}  {'predicted':<{width}}  prob\n")
    for r in rows:
        mark = "" if r["correct"] else "  <- wrong"
        stream.write(f"{r['test_index']:>6}  {r['true']:<{width}}  {r['predicted']:<{width}}  "
                     f"{number(r['probability'])}{mark}\n")
    stream.write(f"{right}/{len(rows)} correct\n")
    return rows


def predict_picture(run_id: str, path: Path, top: int = 3, stream=None) -> list[tuple[str, float]]:
    stream = stream or sys.stdout
    model = load_model(run_id)
    info = card(model)
    if "labels" not in info:
        raise ValueError(f"run {run_id} is a {info.get('task', 'non-image')} model; --image needs an image classifier")
    x, inverted = read_image(Path(path), int(info["input_shape"][-1]))
    frame = model.predict(x[None])
    probs = sorted(((lbl, float(frame[f"prob_{lbl}"].iloc[0])) for lbl in info["labels"]), key=lambda t: -t[1])
    note = " (inverted: dark on light)" if inverted else ""
    stream.write(f"{path}{note}: {probs[0][0]}\n")
    for label, p in probs[:top]:
        stream.write(f"  {label:<12} {number(p)}\n")
    return probs
