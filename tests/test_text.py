"""Text corpora, the book's sampling iterators, the language-model task, the RNNs and text generation."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import math
import threading
import zipfile
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from mxlab import runner
from mxlab.callbacks import TextSampler
from mxlab.data import text
from mxlab.data.core import DataError
from mxlab.models.rnn import predict_rnn
from mxlab.registry import models
from mxlab.spec import from_dict, load_spec
from mxlab.tasks import tasks
from mxlab.train import FitState


FORTUNE = ("\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光，疑是地上霜。\n%\n"
           "\x1b[32m《登鹳雀楼》\x1b[m\n\x1b[33m作者：王之涣\x1b[m\n白日依山尽，黄河入海流。\n%\n")


def lm_spec(**data):
    return from_dict("lm", {"task": "language_model", "model": {"name": "rnn_scratch", "num_hiddens": 8},
                            "data": {"name": "char_corpus", "batch_size": 2, "num_steps": 6, **data},
                            "train": {"epochs": 1, "lr": 1.0, "device": "cpu"}})


# ---------------------------------------------------------------- corpora

def test_fortune_file_loses_colour_codes_and_separators():
    parsed = text.parse_fortunes(FORTUNE)
    assert "\x1b" not in parsed and "[m" not in parsed
    assert "%" not in parsed.split("\n")
    assert parsed == "《静夜思》\n作者：李白\n床前明月光，疑是地上霜。\n《登鹳雀楼》\n作者：王之涣\n白日依山尽，黄河入海流。\n"


def test_tang300_reads_the_debian_file():
    corpus, checksums = text.read_tang300()
    assert "\x1b" not in corpus and "\n%\n" not in corpus
    assert "床前明月光" in corpus and "白日依山尽" in corpus
    assert len(checksums["data.sha256.tang300"]) == 64


def test_tang300_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("MXLAB_TANG300", str(tmp_path / "absent"))
    with pytest.raises(DataError, match=r"apt-get install fortunes-zh"):
        text.read_corpus("tang300")


def test_unknown_corpus_lists_the_allowed_ones():
    with pytest.raises(DataError, match=r"'poems'.*tang300, jaychou, timemachine, file:<path>"):
        text.read_corpus("poems")


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1 for as long as the test runs."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def make_zip(path: Path, member: str, content: str) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, content.encode("utf-8"))
    path.write_bytes(buffer.getvalue())
    return hashlib.sha1(buffer.getvalue()).hexdigest()


def test_jaychou_is_downloaded_checked_by_sha1_and_cached(served, tmp_path, monkeypatch):
    folder, base = served
    lyrics = "想要有直升机\r\n想要和你飞到宇宙去\n" * 50
    sha1 = make_zip(folder / "lyrics.zip", "jaychou_lyrics.txt", lyrics)
    real = text.SOURCES["jaychou"]
    monkeypatch.setitem(text.SOURCES, "jaychou", text.Source(real.url, sha1, real.file_name, real.member))
    monkeypatch.setenv("MXLAB_CORPUS_URL_JAYCHOU", f"{base}/lyrics.zip")
    monkeypatch.setenv("MXLAB_CORPUS_DIR", str(tmp_path / "cache"))

    corpus, checksums = text.read_corpus("jaychou")
    assert corpus == lyrics
    assert checksums == {"data.sha1.jaychou_lyrics.txt.zip": sha1}
    cached = tmp_path / "cache" / "jaychou_lyrics.txt.zip"
    assert hashlib.sha1(cached.read_bytes()).hexdigest() == sha1

    # The cache answers without the server; newlines become spaces and max_chars keeps the book's head.
    (folder / "lyrics.zip").unlink()
    bundle = text.char_corpus(lm_spec(corpus="jaychou").data, mx.cpu(), 0, corpus="jaychou", max_chars=100)
    assert bundle.extra["num_chars"] == 100
    assert "\n" not in bundle.extra["idx_to_char"] and " " in bundle.extra["idx_to_char"]


def test_download_with_the_wrong_sha1_saves_nothing(served, tmp_path):
    folder, base = served
    (folder / "corpus.txt").write_text("the time machine\n" * 20)
    target = tmp_path / "cache" / "corpus.txt"
    with pytest.raises(DataError, match=r"SHA-1 [0-9a-f]{40}, expected 0{40}; nothing was saved"):
        text.fetch_verified(f"{base}/corpus.txt", "0" * 40, target)
    assert not target.exists() and not list(target.parent.glob("*.part"))

    good = hashlib.sha1((folder / "corpus.txt").read_bytes()).hexdigest()
    assert text.fetch_verified(f"{base}/corpus.txt", good, target) == (folder / "corpus.txt").read_bytes()
    target.write_text("tampered")
    with pytest.raises(DataError, match=r"delete the file"):
        text.fetch_verified(f"{base}/corpus.txt", good, target)


def test_unreachable_download_names_url_and_file(tmp_path):
    with pytest.raises(DataError, match=r"download from http://127.0.0.1:9/x.txt failed.*SHA-1 " + "1" * 40):
        text.fetch_verified("http://127.0.0.1:9/x.txt", "1" * 40, tmp_path / "x.txt", timeout=5)


# ---------------------------------------------------------------- vocabulary and splits

def test_vocab_comes_from_the_training_text(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcabcabcabcabcabcabcabcabcabcabcabcabcab" + "xyzab" * 10, encoding="utf-8")
    spec = lm_spec(corpus=f"file:{path}", val_fraction=0.55)
    bundle = text.char_corpus(spec.data, mx.cpu(), 0, **spec.data.options)
    assert bundle.extra["idx_to_char"] == ["a", "b", "c"]
    assert bundle.extra["vocab_size"] == 3
    assert bundle.extra["char_to_idx"] == {"a": 0, "b": 1, "c": 2}
    assert bundle.extra["val_dropped_chars"] == 30     # x, y and z never appear in the training head
    assert bundle.val is not None and bundle.val.num_chars == 50 - 30
    vocab = text.Vocab(tuple(bundle.extra["idx_to_char"]))
    assert vocab.decode(vocab.encode("cab")) == "cab"


def test_a_text_too_short_for_one_batch_is_a_clear_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abcdefgh")
    spec = lm_spec(corpus=f"file:{path}")
    with pytest.raises(DataError, match=r"train text has 8 characters; batch_size 2 x num_steps 6 .* at least 14"):
        text.char_corpus(spec.data, mx.cpu(), 0, **spec.data.options)


# ---------------------------------------------------------------- the book's iterators (0..29, batch 2, 6 steps)

def toy_batches(sampling):
    loader = text.CharLoader(np.arange(30), 2, 6, sampling, mx.cpu())
    batches = [(X.asnumpy(), Y.asnumpy()) for X, Y in loader]
    assert len(batches) == len(loader) == 2
    return batches


def test_random_sampling_gives_the_books_shapes():
    mx.random.seed(0)
    batches = toy_batches("random")
    starts = []
    for X, Y in batches:
        assert X.shape == Y.shape == (2, 6)
        np.testing.assert_array_equal(Y, X + 1)
        np.testing.assert_array_equal(X, X[:, :1] + np.arange(6))
        starts += list(X[:, 0])
    # (30 - 1) // 6 = 4 examples starting at multiples of 6, each used once
    assert sorted(starts) == [0, 6, 12, 18]


def test_adjacent_sampling_continues_each_row_in_the_next_batch():
    (X0, Y0), (X1, Y1) = toy_batches("adjacent")
    np.testing.assert_array_equal(X0, [[0, 1, 2, 3, 4, 5], [15, 16, 17, 18, 19, 20]])
    np.testing.assert_array_equal(X1, [[6, 7, 8, 9, 10, 11], [21, 22, 23, 24, 25, 26]])
    np.testing.assert_array_equal(Y0, X0 + 1)
    np.testing.assert_array_equal(Y1, X1 + 1)
    np.testing.assert_array_equal(X1[:, 0], X0[:, -1] + 1)


# ---------------------------------------------------------------- the task's state handling

class Spy:
    """Wraps a network and keeps the state each batch starts from."""

    def __init__(self, net):
        self.net, self.seen = net, []

    def begin_state(self, batch_size, ctx):
        return self.net.begin_state(batch_size, ctx)

    def __call__(self, X, state):
        self.seen.append(state)
        return self.net(X, state)


def two_batches(sampling):
    net = models.get("rnn_scratch")(vocab_size=30, num_hiddens=4)
    net.initialize(ctx=mx.cpu())
    spy, task = Spy(net), tasks.get("language_model")()
    loader = text.CharLoader(np.arange(30), 2, 6, sampling, mx.cpu())
    carry = task.begin_pass(spy, loader, mx.cpu())
    outputs = []
    with mx.autograd.record():
        for X, y in loader:
            y_hat, carry = task.forward(spy, X, carry)
            outputs.append((X, y, task.loss(net)(y_hat, y)))
    return net, task, spy, carry, outputs


def test_random_sampling_starts_every_batch_from_zero_state():
    _, _, spy, carry, _ = two_batches("random")
    assert len(spy.seen) == 2
    for (H,) in spy.seen:
        assert H.shape == (2, 4) and H.abs().sum().asscalar() == 0
    assert carry["state"][0].abs().sum().asscalar() > 0


def test_adjacent_sampling_carries_the_state_detached():
    net, task, spy, _, outputs = two_batches("adjacent")
    (H0,), (H1,) = spy.seen
    assert H0.abs().sum().asscalar() == 0 and H1.abs().sum().asscalar() > 0
    # The gradient of batch 2's loss equals that of a fresh pass from the same state as a constant:
    # nothing flows back into batch 1.
    _, _, l1 = outputs[1]
    l1.backward()
    carried = {k: v.grad.copy() for k, v in net.params.items()}
    X1, y1, _ = outputs[1]
    with mx.autograd.record():
        y_hat, _ = net(X1, [H1.copy()])
        fresh = task.loss(net)(y_hat, y1)
    fresh.backward()
    for k, v in net.params.items():
        np.testing.assert_allclose(carried[k].asnumpy(), v.grad.asnumpy(), rtol=1e-5, atol=1e-7)


def test_loss_reads_labels_time_major_and_counts_tokens():
    task = tasks.get("language_model")()
    y = mx.nd.array([[0, 1, 2], [3, 4, 5]])          # (batch 2, steps 3)
    y_hat = mx.nd.one_hot(mx.nd.array([0, 3, 1, 4, 2, 5]), 6) * 50   # rows t0b0, t0b1, t1b0, ...
    assert task.loss(object())(y_hat, y).sum().asscalar() < 1e-6
    assert task.count(y) == 6
    metrics = task.finish([6 * math.log(3)], 6, "val")
    assert metrics["val/ppl"] == pytest.approx(3)


# ---------------------------------------------------------------- models, training and generation

@pytest.mark.parametrize("name", ["rnn_scratch", "rnn", "gru", "lstm"])
def test_models_map_indices_to_time_major_scores(name):
    net = models.get(name)(vocab_size=11, num_hiddens=5)
    if getattr(net, "scratch", False):
        net.initialize(ctx=mx.cpu())
    else:
        net.initialize(mx.init.Normal(0.01), ctx=mx.cpu())
    X = mx.nd.array([[1, 2, 3], [4, 5, 6]])
    Y, state = net(X, net.begin_state(2, mx.cpu()))
    assert Y.shape == (3 * 2, 11)
    assert state[0].shape[-2:] == (2, 5)
    assert np.isfinite(Y.asnumpy()).all()


def test_a_model_without_vocab_size_cannot_be_initialised():
    with pytest.raises(ValueError, match=r"vocab_size: got None; allowed: an integer >= 1.*char_corpus"):
        models.get("gru")().initialize()


@pytest.mark.parametrize("name,sampling", [("rnn_scratch", "random"), ("gru", "adjacent")])
def test_short_training_on_tang300_gives_finite_ppl_and_a_sample(workspace, name, sampling):
    spec = load_spec(name, ["train.epochs=1", "data.limit=3000", f"data.sampling={sampling}", "train.device=cpu",
                            "model.num_hiddens=32"])
    from mxlab.data import load_data

    bundle = load_data(spec, mx.cpu())   # the vocabulary the runner's own load gives too
    assert bundle.train.sampling == sampling and bundle.extra["vocab_size"] == len(bundle.extra["idx_to_char"])
    result = runner.run(spec, track=False, progress=False)
    net, history = result.net, result.history
    assert math.isfinite(history[-1]["train/ppl"]) and history[-1]["train/ppl"] > 1
    prefix = bundle.extra["idx_to_char"][5] + bundle.extra["idx_to_char"][7]
    sample = predict_rnn(net, prefix, 10, bundle.extra["idx_to_char"], bundle.extra["char_to_idx"], mx.cpu())
    assert sample.startswith(prefix) and len(sample) == 12


def test_sampler_refuses_prefixes_the_full_corpus_lacks(workspace, tmp_path):
    spec = load_spec("rnn_scratch", ["train.sample_prefixes=[床前, 🙂]", "train.sample_every=1"])
    bundle = text.char_corpus(spec.data, mx.cpu(), 0, **spec.data.options)
    state = FitState(spec, None, None, bundle, [mx.cpu()])
    with pytest.raises(ValueError, match=r"train.sample_prefixes: '🙂'.*not in the training text"):
        TextSampler(tmp_path, 1, spec.train.sample_prefixes, 5).on_fit_begin(state)


@pytest.mark.slow
def test_tracked_run_logs_text_samples(workspace):
    from mlflow.tracking import MlflowClient

    from mxlab.runner import run
    from mxlab.tracking import tracking_uri

    # data.limit keeps only the head of the corpus: 白 is in it, 床 is not, so that prefix is noted as skipped.
    spec = load_spec("gru", ["train.epochs=2", "data.limit=3000", "train.device=cpu", "model.num_hiddens=16",
                             "train.sample_every=1", "train.sample_length=8", "train.sample_prefixes=[白, 床前]"])
    result = run(spec, progress=False)
    assert result.status == "FINISHED"
    c = MlflowClient(tracking_uri())
    logged = sorted(f.path for f in c.list_artifacts(result.run_id, "samples"))
    assert logged == ["samples/epoch_1.txt", "samples/epoch_2.txt"]
    local = Path(c.download_artifacts(result.run_id, "samples/epoch_2.txt"))
    header, first, second = local.read_text(encoding="utf-8").splitlines()
    assert header.startswith("epoch 2  train/ppl")
    assert first.startswith("白") and len(first) == 1 + 8
    assert second.startswith("床前 (skipped: '床' not in the training text")
    metrics = c.get_run(result.run_id).data.metrics
    assert math.isfinite(metrics["train/ppl"])
