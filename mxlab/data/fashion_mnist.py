"""Fashion-MNIST from its four IDX files, verified by the SHA-256 of their decompressed content.

Sources, in order: ``MXLAB_DATA_DIR``, MXNet's cache ``~/.mxnet/datasets/fashion-mnist``, the Debian package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), else a download from MXNet's mirror into
the cache. Debian recompresses the archives, so the archives differ between sources; their content does not,
which is why the decompressed bytes are hashed, on every read (:func:`mxlab.data.download.read_verified`).
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from mxlab.data.core import ArrayLoader, DataBundle, DataError, make_splits
from mxlab.data.download import Check, download_verified, read_verified
from mxlab.devices import import_mxnet
from mxlab.registry import datasets

# SHA-256 of the decompressed IDX files: the same in the publisher's archives, MXNet's mirror and Debian's package.
FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRROR = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def mxnet_cache_dir() -> Path:
    return Path.home() / ".mxnet" / "datasets" / "fashion-mnist"


def search_dirs() -> list[Path]:
    dirs = [mxnet_cache_dir(), DEBIAN_DIR]
    if os.environ.get("MXLAB_DATA_DIR"):
        dirs.insert(0, Path(os.environ["MXLAB_DATA_DIR"]))
    return dirs


def how_to_provide(name: str) -> str:
    return (f"{name}.gz is needed (decompressed SHA-256 {FILES[name]}). Provide it one of three ways: "
            f"put the four files in $MXLAB_DATA_DIR; install the Debian package `dataset-fashion-mnist` "
            f"(files in {DEBIAN_DIR}); or let mxlab download them from {_base_url()} into {mxnet_cache_dir()}")


def _base_url() -> str:
    base = os.environ.get("MXNET_GLUON_REPO", MIRROR)
    return (base if base.endswith("/") else base + "/") + "dataset/fashion-mnist/"


def check(name: str) -> Check:
    """What ``<name>.gz`` must hold: its decompressed content, by SHA-256."""
    return Check(FILES[name], "sha256", gzip.decompress, "decompressed content")


def locate(name: str, download: bool = True) -> Path:
    """The first ``<name>.gz`` in :func:`search_dirs`, else a fresh download into MXNet's cache."""
    for folder in search_dirs():
        candidate = folder / f"{name}.gz"
        if candidate.is_file():
            return candidate
    if not download:
        raise DataError(f"{name}.gz was not found in {', '.join(map(str, search_dirs()))}. {how_to_provide(name)}")
    target = mxnet_cache_dir() / f"{name}.gz"
    download_verified(_base_url() + target.name, target, check(name), how_to_provide(name), search_dirs())
    return target


def parse_idx(content: bytes) -> np.ndarray:
    """An IDX file (unsigned bytes) as an array of the shape its header gives."""
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] != 0x08:
        raise DataError("not an IDX file of unsigned bytes (magic 0x0000 08 nn)")
    ndim = content[3]
    shape = struct.unpack(f">{ndim}I", content[4:4 + 4 * ndim])
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"IDX header says shape {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def load_arrays(download: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The four verified arrays by file name, and their checksums."""
    arrays = {}
    for name in FILES:
        path = locate(name, download)
        try:
            arrays[name] = parse_idx(read_verified(path, check(name), how_to_provide(name)))
        except DataError as exc:
            raise DataError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from None
    return arrays, dict(FILES)


def image_transform(resize: int | None, mean: float | None, std: float | None):
    """uint8 (N, 1, 28, 28) on the device -> float32 in [0, 1], resized and normalised, a batch at a time."""
    mx = import_mxnet()

    def transform(X):
        X = X.astype("float32") / 255
        if resize:
            X = mx.nd.contrib.BilinearResize2D(X, height=resize, width=resize)
        if mean is not None:
            X = (X - mean) / std
        return X

    return transform


@datasets.register()
def fashion_mnist(data, ctx, seed: int, *, resize: int | None = None, normalize: bool = False) -> DataBundle:
    """Fashion-MNIST (60,000 train / 10,000 test, 1x28x28, 10 classes); ``resize`` to a square side on the device.

    ``normalize`` standardises by the training split's mean and standard deviation (the book does not).
    ``data.val_fraction`` and ``data.limit`` follow the rule of :mod:`mxlab.data.core`.
    """
    if resize is not None and not 8 <= resize <= 512:
        raise ValueError(f"data.resize: got {resize}; allowed: null or an integer in [8, 512]")
    arrays, checksums = load_arrays()
    (X_train, y_train), val, (X_test, y_test) = make_splits(
        data, seed, (arrays["train-images-idx3-ubyte"][:, None], arrays["train-labels-idx1-ubyte"]),
        (arrays["t10k-images-idx3-ubyte"][:, None], arrays["t10k-labels-idx1-ubyte"]))
    mean = std = None
    if normalize:
        scaled = X_train.astype(np.float32) / 255
        mean, std = float(scaled.mean()), float(scaled.std())
    transform = image_transform(resize, mean, std)
    bs = data.batch_size
    side = resize or 28
    return DataBundle(
        train=ArrayLoader(X_train, y_train, bs, ctx, shuffle=True, transform=transform),
        val=ArrayLoader(*val, bs, ctx, shuffle=False, transform=transform) if val else None,
        test=ArrayLoader(X_test, y_test, bs, ctx, shuffle=False, transform=transform),
        input_shape=(1, side, side),
        checksums={f"data.sha256.{name}": digest for name, digest in checksums.items()},
    )
