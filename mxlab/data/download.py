"""Getting data files safely: atomic writes, hash checks and verified downloads.

A :class:`Check` says what a file must hash to: ``algorithm`` over the payload, or over what ``content``
derives from it (Fashion-MNIST hashes the decompressed IDX bytes, since its sources compress differently).
:func:`download_verified` refuses a payload that fails its check before anything is written, and writes one
that passes atomically, so the cache never holds a partial or wrong file under the real name.
A file read locally is hashed when it is read (:func:`read_verified`), and read again whenever it changed, so an
in-place edit is always caught.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from mxlab.data.core import DataError

# What reading a payload may raise: a missing file, or a decompressor meeting a bad archive.
UNREADABLE = (OSError, EOFError, ValueError, zlib.error)


def atomic_write(target: Path, payload: bytes | str) -> None:
    """Write ``payload`` to ``target`` via a synced temporary file in the same folder and a rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())   # the rename must not land before the bytes do
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Check:
    """A payload's expected digest; ``content`` turns the payload into what is hashed (and read)."""

    expected: str
    algorithm: str = "sha256"
    content: Optional[Callable[[bytes], bytes]] = None
    what: str = ""          # how messages name what is hashed, e.g. "decompressed content"

    @property
    def label(self) -> str:
        name = self.algorithm.upper().replace("SHA", "SHA-")
        return f"{self.what} has {name}" if self.what else name

    def read(self, payload: bytes) -> bytes:
        return payload if self.content is None else self.content(payload)

    def digest(self, content: bytes) -> str:
        return hashlib.new(self.algorithm, content).hexdigest()

    def mismatch(self, source, got: str, note: str) -> DataError:
        return DataError(f"{source}: {self.label} {got}, expected {self.expected}; {note}")


# ---------------------------------------------------------------- reading and downloading

# What this process verified, by the file's identity and change time (:func:`read_verified`); a few files only.
_verified: dict[tuple, bytes] = {}
_VERIFIED_FILES = 8
# A file changed this recently is not kept: two writes within one tick of the kernel's clock share a change time.
_SETTLED_NS = 2 * 10**9


def read_verified(path: Path, check: Check, how: str) -> bytes:
    """``check.read`` of the file at ``path``, refused unless it has the expected digest.

    Every read is hashed, and the hash (0.07 s for Fashion-MNIST's 47 MB of images here) is small beside the
    decompression (0.64 s). A process keeps what it verified, since a study's trials load the same files again:
    the file is read again only if it changed since. Any write changes its inode's change time (``st_ctime_ns``),
    which no one can set back, so a file edited in place with its size and time kept is still caught.
    """
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
               check.algorithm, check.expected, check.content)
    except OSError:
        key = None   # the read below says what is wrong
    if key in _verified:
        return _verified[key]
    try:
        content = check.read(path.read_bytes())
    except UNREADABLE as exc:
        raise DataError(f"{path}: cannot be read ({exc}). {how}") from None
    got = check.digest(content)
    if got != check.expected:
        raise check.mismatch(path, got, how)
    if key is not None and time.time_ns() - stat.st_ctime_ns > _SETTLED_NS:
        if len(_verified) >= _VERIFIED_FILES:
            del _verified[next(iter(_verified))]   # the oldest
        _verified[key] = content
    return content


def download_verified(url: str, target: Path, check: Check, how: str, searched: Sequence[Path] = (),
                      timeout: float = 30) -> bytes:
    """Download ``url`` to ``target`` if it passes ``check``; returns ``check.read`` of the payload.

    ``searched`` names the folders already looked in, for the message when the download fails.
    """
    where = ", ".join(map(str, searched or [target.parent]))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (OSError, ValueError) as exc:
        raise DataError(f"{target.name} was not found in {where} and the download from {url} failed ({exc}). "
                        f"{how}") from None
    try:
        content = check.read(payload)
        got = check.digest(content)
    except UNREADABLE as exc:
        got = f"none (unreadable: {exc})"
    if got != check.expected:
        raise check.mismatch(url, got, f"nothing was saved to {target} ({len(payload):,} bytes downloaded). {how}")
    atomic_write(target, payload)
    return content
