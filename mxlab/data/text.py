"""Character corpora for the language models (book chapter 6), batched on the device as the book does.

Corpora (``data.corpus``):

- ``tang300``: 300 Tang poems from the Debian/Ubuntu package ``fortunes-zh`` (``/usr/share/games/fortunes/tang300``,
  or ``$MXLAB_TANG300``). The file's ANSI colour codes (around titles and authors) and its ``%`` separator
  lines are removed; titles, authors and verses stay. Needs no network, hence the RNN experiments' default.
- ``jaychou``: the book's Jay Chou lyrics, a zip holding ``jaychou_lyrics.txt``; the book trains on its first
  10,000 characters (``max_chars: 10000``).
- ``timemachine``: The Time Machine (the English edition's corpus), reduced as that edition does: letters only,
  lower case, every other run of characters one space.
- ``file:<path>``: any UTF-8 text file.

Downloads go to ``$MXLAB_CORPUS_DIR`` (default ``~/.mxnet/datasets/<corpus>/``) and are checked by SHA-1
(:mod:`mxlab.data.download`; a file whose check is on record is not hashed again); ``MXLAB_CORPUS_URL_JAYCHOU`` /
``MXLAB_CORPUS_URL_TIMEMACHINE`` replace a corpus' URL (a mirror, or a ``file://`` URL); the SHA-1 must still
match. By default newlines become spaces, as the book does for its lyrics.

The vocabulary is the sorted set of the training text's characters (the book's ``set`` order changes from run
to run). With ``data.val_fraction`` > 0 the tail of the text is held out for ``val/*``, before ``data.limit``
caps each part (the rule of :mod:`mxlab.data.core`); the val characters that the training text never shows are
dropped, and their number is recorded in ``extra['val_dropped_chars']``.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

import numpy as np

from mxlab.data.core import DataBundle, DataError, make_splits
from mxlab.data.download import Check, download_verified, read_verified
from mxlab.devices import import_mxnet
from mxlab.registry import datasets

TANG300_PATH = Path("/usr/share/games/fortunes/tang300")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
SAMPLINGS = ("random", "adjacent")


@dataclass(frozen=True)
class Source:
    """A corpus that is downloaded: where from, its SHA-1, and the text file inside when it is a zip."""

    url: str
    sha1: str
    file_name: str
    member: Optional[str] = None


# Where the book's corpora are published, with the SHA-1 of what was published there.
SOURCES = {
    "jaychou": Source("https://raw.githubusercontent.com/d2l-ai/d2l-zh/v1/data/jaychou_lyrics.txt.zip",
                      "9529987e701a4f37048ab778270a5dde9a762a0b", "jaychou_lyrics.txt.zip", "jaychou_lyrics.txt"),
    "timemachine": Source("http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
                          "090b5e7e70c295757f55df93cb0a180b9691891a", "timemachine.txt"),
}
CORPORA = ("tang300", *SOURCES, "file:<path>")


# ---------------------------------------------------------------- reading the corpora

def tang300_path() -> Path:
    return Path(os.environ.get("MXLAB_TANG300") or TANG300_PATH)


def parse_fortunes(text: str) -> str:
    """A fortune file's text without ANSI colour codes and without the ``%`` lines between entries."""
    text = ANSI_RE.sub("", text)
    return "\n".join(line for line in text.split("\n") if line.strip() != "%").strip("\n") + "\n"


def read_tang300(path: Path | None = None) -> tuple[str, dict]:
    path = path or tang300_path()
    if not path.is_file():
        raise DataError(f"corpus tang300: {path} is missing; install the Debian/Ubuntu package fortunes-zh "
                        f"(`apt-get install fortunes-zh`, or `make data` as root), or set MXLAB_TANG300 to a copy "
                        f"of the file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"corpus tang300: {path} is not UTF-8 ({exc}); expected the fortunes-zh file") from None
    return parse_fortunes(text), {"data.sha256.tang300": hashlib.sha256(raw).hexdigest()}


def cache_dir(corpus: str) -> Path:
    base = os.environ.get("MXLAB_CORPUS_DIR")
    return Path(base) if base else Path.home() / ".mxnet" / "datasets" / corpus


def source_url(corpus: str) -> str:
    return os.environ.get(f"MXLAB_CORPUS_URL_{corpus.upper()}") or SOURCES[corpus].url


def fetch_verified(url: str, sha1: str, target: Path, timeout: float = 30, also: str = "") -> bytes:
    """The bytes of ``target``, downloaded from ``url`` first when absent; either way checked against ``sha1``.

    ``also`` adds another way to provide the file to the message of a failed download.
    """
    check = Check(sha1, "sha1")
    if target.is_file():
        return read_verified(target, check, f"delete the file to download it again from {url}")
    how = f"Put {target.name} in {target.parent} by hand (SHA-1 {sha1}){also}"
    return download_verified(url, target, check, how, timeout=timeout)


def read_downloaded(corpus: str) -> tuple[str, dict]:
    source = SOURCES[corpus]
    target = cache_dir(corpus) / source.file_name
    also = f", or point MXLAB_CORPUS_URL_{corpus.upper()} at a copy (a mirror or a file:// URL)"
    payload = fetch_verified(source_url(corpus), source.sha1, target, also=also)
    if source.member:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                payload = archive.read(source.member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{target}: cannot read {source.member} from the archive ({exc})") from None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{target}: not UTF-8 text ({exc})") from None
    if corpus == "timemachine":
        # The English edition's reduction: letters only, lower case.
        text = "\n".join(re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.split("\n"))
    return text, {f"data.sha1.{source.file_name}": source.sha1}


def read_file(path_text: str) -> tuple[str, dict]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"data.corpus: file:{path_text}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"data.corpus: file:{path_text} is not UTF-8 text ({exc})") from None
    return text, {f"data.sha256.{path.name}": hashlib.sha256(raw).hexdigest()}


def read_corpus(corpus: str) -> tuple[str, dict]:
    """The corpus' text and the checksums to record."""
    if corpus == "tang300":
        return read_tang300()
    if corpus in SOURCES:
        return read_downloaded(corpus)
    if corpus.startswith("file:") and len(corpus) > len("file:"):
        return read_file(corpus[len("file:"):])
    raise DataError(f"data.corpus: got {corpus!r}; allowed: {', '.join(CORPORA)}")


# ---------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class Vocab:
    idx_to_char: tuple[str, ...]

    @classmethod
    def build(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    @property
    def char_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.idx_to_char)}

    def __len__(self) -> int:
        return len(self.idx_to_char)

    def encode(self, text: str) -> np.ndarray:
        lookup = self.char_to_idx
        return np.array([lookup[c] for c in text if c in lookup], dtype=np.int64)

    def decode(self, indices) -> str:
        return "".join(self.idx_to_char[int(i)] for i in indices)


# ---------------------------------------------------------------- the book's iterators

def data_iter_random(corpus_indices, batch_size: int, num_steps: int, ctx=None) -> Iterator:
    """Random sampling: each example is a ``num_steps`` slice starting at a multiple of ``num_steps``, in random
    order; neighbouring batches are not adjacent in the text. X, Y are (batch_size, num_steps), Y = X shifted by one.

    ``corpus_indices`` is an NDArray on ``ctx``; the shuffle is mxnet's, so it follows ``mx.random.seed``.
    """
    mx = import_mxnet()
    # Minus one: the labels are the inputs moved one character on.
    num_examples = (corpus_indices.shape[0] - 1) // num_steps
    epoch_size = num_examples // batch_size
    starts = mx.nd.random.shuffle(mx.nd.arange(num_examples, ctx=ctx)) * num_steps
    offsets = mx.nd.arange(num_steps, ctx=ctx).reshape((1, -1))
    for i in range(epoch_size):
        positions = starts[i * batch_size:(i + 1) * batch_size].reshape((-1, 1)) + offsets
        yield mx.nd.take(corpus_indices, positions), mx.nd.take(corpus_indices, positions + 1)


def data_iter_consecutive(corpus_indices, batch_size: int, num_steps: int, ctx=None) -> Iterator:
    """Adjacent sampling: the text is cut into ``batch_size`` rows; batch i+1 continues batch i row by row, which
    is why the hidden state may be carried over from one batch to the next.
    """
    batch_len = corpus_indices.shape[0] // batch_size
    indices = corpus_indices[0:batch_size * batch_len].reshape((batch_size, batch_len))
    epoch_size = (batch_len - 1) // num_steps
    for i in range(epoch_size):
        i = i * num_steps
        yield indices[:, i:i + num_steps], indices[:, i + 1:i + num_steps + 1]


def num_batches(length: int, batch_size: int, num_steps: int, sampling: str) -> int:
    if sampling == "random":
        return ((length - 1) // num_steps) // batch_size
    return (length // batch_size - 1) // num_steps


def min_length(batch_size: int, num_steps: int, sampling: str) -> int:
    """The fewest characters that give one batch."""
    if sampling == "random":
        return batch_size * num_steps + 1
    return batch_size * (num_steps + 1)


class CharLoader:
    """(X, Y) index batches of shape (batch_size, num_steps) from a corpus held on ``ctx``.

    ``sampling`` tells the language-model task whether the hidden state may be carried between batches.
    """

    def __init__(self, indices: np.ndarray, batch_size: int, num_steps: int, sampling: str, ctx, split: str = "train"):
        if sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling: got {sampling!r}; allowed: {', '.join(SAMPLINGS)}")
        need = min_length(batch_size, num_steps, sampling)
        if len(indices) < need:
            raise DataError(f"the {split} text has {len(indices):,} characters; batch_size {batch_size} x num_steps "
                            f"{num_steps} with {sampling} sampling needs at least {need:,}: raise data.limit or "
                            f"data.val_fraction, or lower data.batch_size or data.num_steps")
        mx = import_mxnet()
        # float32: what one_hot and the cross-entropy labels take.
        self.corpus = mx.nd.array(indices, ctx=ctx, dtype=np.float32)
        self.batch_size, self.num_steps, self.sampling, self.ctx = batch_size, num_steps, sampling, ctx
        self.num_chars = len(indices)

    def __len__(self) -> int:
        return num_batches(self.num_chars, self.batch_size, self.num_steps, self.sampling)

    def __iter__(self) -> Iterator:
        make = data_iter_random if self.sampling == "random" else data_iter_consecutive
        return make(self.corpus, self.batch_size, self.num_steps, self.ctx)


# ---------------------------------------------------------------- the dataset

@datasets.register()
def char_corpus(data, ctx, seed: int, *, corpus: str = "tang300", num_steps: int = 35,
                sampling: Literal["random", "adjacent"] = "adjacent", max_chars: Optional[int] = None,
                newlines: Literal["space", "keep"] = "space") -> DataBundle:
    """A character corpus as (X, Y) index batches; ``extra`` carries ``vocab_size``, ``idx_to_char``, ``char_to_idx``.

    ``max_chars`` keeps the corpus' first characters (the book's jaychou: 10,000): that is the full text.
    ``data.val_fraction`` holds out its tail, then ``data.limit`` caps each part (:mod:`mxlab.data.core`).
    """
    if num_steps < 1:
        raise ValueError(f"data.num_steps: got {num_steps}; allowed: an integer >= 1")
    if max_chars is not None and max_chars < 2:
        raise ValueError(f"data.max_chars: got {max_chars}; allowed: null or an integer >= 2")
    text, checksums = read_corpus(corpus)
    if newlines == "space":
        text = text.replace("\r", " ").replace("\n", " ")
    if max_chars:
        text = text[:max_chars]
    (train_text,), val, _ = make_splits(data, seed, (text,), tail=True)
    val_text = val[0] if val else ""
    vocab = Vocab.build(train_text)
    val_indices = vocab.encode(val_text)
    bs = data.batch_size
    return DataBundle(
        train=CharLoader(vocab.encode(train_text), bs, num_steps, sampling, ctx, "train"),
        val=CharLoader(val_indices, bs, num_steps, sampling, ctx, "val") if val else None,
        input_shape=(num_steps,),
        checksums=checksums,
        extra={
            "vocab_size": len(vocab),
            "idx_to_char": list(vocab.idx_to_char),
            "char_to_idx": vocab.char_to_idx,
            "num_chars": len(train_text),
            "val_dropped_chars": len(val_text) - len(val_indices),
        },
    )
