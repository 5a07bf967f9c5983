"""Fashion-MNIST location, verification and device batching on tiny IDX files the tests write; the split rule."""
from __future__ import annotations

import contextlib
import gzip
import os
import hashlib
import http.server
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mxlab.data import fashion_mnist as fm
from mxlab.data.core import ArrayLoader, DataError, hold_out, make_splits, val_size
from mxlab.data.download import atomic_write
from mxlab.data.synthetic import synthetic_linear
from mxlab.data.text import char_corpus


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Four tiny IDX archives in a folder, FILES pointing at their hashes, and no other source."""
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (12, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(12) % 10,
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (5, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(5) % 10,
    }
    folder = tmp_path / "data"
    folder.mkdir()
    hashes = {}
    for name, array in arrays.items():
        content = idx_bytes(array)
        hashes[name] = hashlib.sha256(content).hexdigest()
        (folder / f"{name}.gz").write_bytes(gzip.compress(content))
    monkeypatch.setattr(fm, "FILES", hashes)
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fm, "mxnet_cache_dir", lambda: tmp_path / "mxnet-cache")
    monkeypatch.setenv("MXLAB_DATA_DIR", str(folder))
    return folder, arrays


@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server for ``folder`` on 127.0.0.1, standing in for MXNet's mirror; yields its base URL."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_reads_and_parses_verified_files(tiny):
    folder, arrays = tiny
    loaded, checksums = fm.load_arrays(download=False)
    for name, array in arrays.items():
        np.testing.assert_array_equal(loaded[name], array)
    assert checksums == fm.FILES


def test_recompressed_archive_with_same_content_is_accepted(tiny):
    folder, arrays = tiny
    name = "train-labels-idx1-ubyte"
    (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[name]), compresslevel=1, mtime=1))
    np.testing.assert_array_equal(fm.load_arrays(download=False)[0][name], arrays[name])


def test_mismatch_names_file_hash_and_the_three_ways(tiny):
    folder, arrays = tiny
    name = "t10k-labels-idx1-ubyte"
    (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arrays[name] + 1)))
    with pytest.raises(DataError) as err:
        fm.load_arrays(download=False)
    message = str(err.value)
    assert f"{name}.gz" in message and fm.FILES[name] in message
    assert "MXLAB_DATA_DIR" in message and "dataset-fashion-mnist" in message and "download" in message


def test_an_in_place_edit_that_keeps_size_and_time_is_caught(tiny):
    fm.load_arrays(download=False)
    folder, arrays = tiny
    name = "train-labels-idx1-ubyte"
    path = folder / f"{name}.gz"
    stat = path.stat()
    edited = arrays[name].copy()
    edited[0] = (edited[0] + 1) % 10   # one label changed: same length, same compressed size or not
    path.write_bytes(gzip.compress(idx_bytes(edited)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match=r"SHA-256 .*, expected"):
        fm.load_arrays(download=False)


def test_a_verified_file_is_read_again_only_once_it_changed(tiny, monkeypatch):
    from mxlab.data import download

    decompressed = []
    monkeypatch.setattr(download.Check, "read", lambda self, payload: decompressed.append(1) or
                        (payload if self.content is None else self.content(payload)))
    load = lambda: fm.load_arrays(download=False)   # noqa: E731
    load()
    load()
    assert len(decompressed) == 8   # the files were written just now: their change time is not settled yet
    monkeypatch.setattr(download, "_SETTLED_NS", -1)
    load()
    load()
    assert len(decompressed) == 12   # settled: verified once, then kept

    folder, arrays = tiny
    name = "train-labels-idx1-ubyte"
    path = folder / f"{name}.gz"
    stat = path.stat()
    time.sleep(0.1)   # past the kernel clock's tick, which stamps the change time
    edited = arrays[name].copy()
    edited[0] = (edited[0] + 1) % 10
    path.write_bytes(gzip.compress(idx_bytes(edited)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DataError, match=r"SHA-256 .*, expected"):
        load()


def test_search_order_prefers_mxlab_data_dir(tiny, tmp_path, monkeypatch):
    folder, _ = tiny
    cache = tmp_path / "mxnet-cache"
    cache.mkdir()
    for archive in folder.iterdir():
        (cache / archive.name).write_bytes(archive.read_bytes())
    assert fm.locate("train-images-idx3-ubyte", download=False).parent == folder
    monkeypatch.delenv("MXLAB_DATA_DIR")
    assert fm.locate("train-images-idx3-ubyte", download=False).parent == cache


def test_missing_without_network_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setenv("MXLAB_DATA_DIR", str(tiny[0].parent / "empty"))
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:9/")   # nothing listens on the discard port
    with pytest.raises(DataError) as err:
        fm.locate("train-images-idx3-ubyte")
    message = str(err.value)
    assert "download" in message and "failed" in message and "dataset-fashion-mnist" in message
    assert fm.FILES["train-images-idx3-ubyte"] in message


def test_download_into_cache_from_mirror(tiny, tmp_path, monkeypatch):
    """The real download path, against a mirror served on 127.0.0.1."""
    folder, arrays = tiny
    mirror = tmp_path / "mirror"
    (mirror / "dataset" / "fashion-mnist").mkdir(parents=True)
    for archive in folder.iterdir():
        (mirror / "dataset" / "fashion-mnist" / archive.name).write_bytes(archive.read_bytes())
    with serve(mirror) as url:
        monkeypatch.setenv("MXLAB_DATA_DIR", str(tmp_path / "empty"))
        monkeypatch.setenv("MXNET_GLUON_REPO", url)
        loaded, _ = fm.load_arrays()
    assert (tmp_path / "mxnet-cache" / "t10k-labels-idx1-ubyte.gz").is_file()
    np.testing.assert_array_equal(loaded["t10k-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"])


def test_a_bad_download_is_refused_before_it_reaches_the_cache(tiny, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror" / "dataset" / "fashion-mnist"
    mirror.mkdir(parents=True)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not the labels"))
    with serve(tmp_path / "mirror") as url:
        monkeypatch.setenv("MXLAB_DATA_DIR", str(tmp_path / "empty"))
        monkeypatch.setenv("MXNET_GLUON_REPO", url)
        with pytest.raises(DataError, match="nothing was saved"):
            fm.locate("t10k-labels-idx1-ubyte")
    assert not (tmp_path / "mxnet-cache" / "t10k-labels-idx1-ubyte.gz").exists()


def test_parse_idx_rejects_garbage():
    with pytest.raises(DataError, match="not an IDX"):
        fm.parse_idx(b"hello world")
    with pytest.raises(DataError, match="header says shape"):
        fm.parse_idx(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x01\x02")


def test_hold_out_is_seeded_and_disjoint():
    X, y = np.arange(100).reshape(100, 1), np.arange(100)
    a = hold_out(X, y, 0.2, seed=1)
    b = hold_out(X, y, 0.2, seed=1)
    assert len(a[2]) == 20 and len(a[0]) == 80
    np.testing.assert_array_equal(a[2], b[2])
    assert not set(a[1]) & set(a[3])
    assert not np.array_equal(hold_out(X, y, 0.2, seed=2)[3], a[3])


def test_loader_shuffles_on_device_and_covers_every_example():
    import mxnet as mx

    X = np.arange(10, dtype=np.uint8).reshape(10, 1)
    loader = ArrayLoader(X, np.arange(10), batch_size=4, ctx=mx.cpu(), shuffle=True,
                         transform=lambda b: b.astype("float32") / 255)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 1), (4, 1), (2, 1)]
    assert batches[0][0].dtype == np.float32 and batches[0][0].context == mx.cpu()
    seen = np.concatenate([b[1].asnumpy() for b in batches])
    assert sorted(seen) == list(range(10)) and list(seen) != list(range(10))
    pixels = np.concatenate([b[0].asnumpy()[:, 0] for b in batches]) * 255
    np.testing.assert_allclose(pixels, seen, atol=1e-4)   # X and y stay paired through the shuffle


def test_real_fashion_mnist_bundle(workspace):
    """The installed data: splits, limit, held-out validation, and resize on the device."""
    import mxnet as mx

    from mxlab.spec import load_spec
    from mxlab.data import load_data

    spec = load_spec("lenet", ["data.limit=300", "data.val_fraction=0.1", "data.resize=32", "data.batch_size=64"])
    bundle = load_data(spec, mx.cpu())
    assert bundle.train.num_examples == 300 and bundle.val.num_examples == 300 and bundle.test.num_examples == 300
    X, y = next(iter(bundle.train))
    assert X.shape == (64, 1, 32, 32) and X.dtype == np.float32 and y.shape == (64,)
    assert 0.0 <= float(X.min().asscalar()) and float(X.max().asscalar()) <= 1.0
    assert bundle.input_shape == (1, 32, 32)
    assert bundle.checksums["data.sha256.train-images-idx3-ubyte"].startswith("c59f468a")


# ---------------------------------------------------------------- the split rule, for every dataset

def data_section(limit=None, val_fraction=0.0):
    """The spec's ``data`` fields the builders read."""
    return SimpleNamespace(batch_size=2, limit=limit, val_fraction=val_fraction, options={})


def positions(part: np.ndarray, whole: np.ndarray) -> list[int]:
    """Where each example of ``part`` stands in ``whole`` (the examples are distinct)."""
    index = {row.tobytes(): i for i, row in enumerate(whole.reshape(len(whole), -1))}
    return [index[row.tobytes()] for row in part.reshape(len(part), -1)]


def assert_rule(build, train_X: np.ndarray, test_X: np.ndarray):
    """val held out of the full training split first, then every split capped; val_fraction 0 is the full data."""
    full = build(data_section())
    np.testing.assert_array_equal(full.train.X.asnumpy().reshape(train_X.shape), train_X)
    np.testing.assert_array_equal(full.test.X.asnumpy().reshape(test_X.shape), test_X)
    assert full.val is None

    n = len(train_X)
    held = build(data_section(val_fraction=0.25))
    train, val = positions(held.train.X.asnumpy(), train_X), positions(held.val.X.asnumpy(), train_X)
    assert len(val) == round(n * 0.25) and sorted(train + val) == list(range(n))

    limit = len(val) - 1
    capped = build(data_section(limit=limit, val_fraction=0.25))
    assert positions(capped.train.X.asnumpy(), train_X) == train[:limit]
    assert positions(capped.val.X.asnumpy(), train_X) == val[:limit]
    assert positions(capped.test.X.asnumpy(), test_X) == list(range(limit))
    # A limit alone caps train and test to their heads.
    only = build(data_section(limit=limit))
    assert positions(only.train.X.asnumpy(), train_X) == list(range(limit)) and only.val is None


def test_split_rule_fashion_mnist(tiny):
    import mxnet as mx

    _, arrays = tiny
    assert_rule(lambda data: fm.fashion_mnist(data, mx.cpu(), 0), arrays["train-images-idx3-ubyte"].astype(np.uint8),
                arrays["t10k-images-idx3-ubyte"].astype(np.uint8))


def test_split_rule_synthetic_linear():
    import mxnet as mx

    X = np.random.RandomState(3).normal(size=(50, 2)).astype(np.float32)   # the builder's first draws
    assert_rule(lambda data: synthetic_linear(data, mx.cpu(), 3, num_train=40, num_test=10), X[:40], X[40:])


def test_split_rule_char_corpus(tmp_path):
    import mxnet as mx

    corpus = "abcdefghij" * 20
    (tmp_path / "c.txt").write_text(corpus)

    def text_of(data):
        bundle = char_corpus(data, mx.cpu(), 0, corpus=f"file:{tmp_path / 'c.txt'}", num_steps=3)
        chars = bundle.extra["idx_to_char"]
        return [None if loader is None else "".join(chars[int(i)] for i in loader.corpus.asnumpy())
                for loader in (bundle.train, bundle.val)]

    assert text_of(data_section()) == [corpus, None]
    assert text_of(data_section(val_fraction=0.25)) == [corpus[:150], corpus[150:]]
    # The tail of the full text is held out, then each part capped.
    assert text_of(data_section(limit=30, val_fraction=0.25)) == [corpus[:30], corpus[150:180]]
    assert text_of(data_section(limit=30)) == [corpus[:30], None]


def test_make_splits_on_its_own():
    X, y = np.arange(20).reshape(20, 1), np.arange(20)
    train, val, test = make_splits(data_section(limit=3, val_fraction=0.5), 0, (X, y), (X[:5], y[:5]))
    assert [len(part[0]) for part in (train, val, test)] == [3, 3, 3]
    assert not set(train[1]) & set(val[1])
    assert val_size(20, 0.0) == 0 and val_size(20, 0.01) == 1 and val_size(20, 0.5) == 10
    assert make_splits(data_section(), 0, (X, y)) == ((X, y), None, None)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write(target, "one")
    with pytest.raises(TypeError):
        atomic_write(target, 123)
    assert target.read_text() == "one" and [p.name for p in target.parent.iterdir()] == ["f.json"]
