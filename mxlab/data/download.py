"""Getting data files safely: atomic writes, hash checks, verified downloads, and the record of verified files.

A :class:`Check` says what a file must hash to: ``algorithm`` over the payload, or over what ``content``
derives from it (Fashion-MNIST hashes the decompressed IDX bytes, since its sources compress differently).
:func:`download_verified` refuses a payload that fails its check before anything is written, and writes one
that passes atomically, so the cache never holds a partial or wrong file under the real name.

The record (``$MXLAB_CACHE_DIR/verified.json``, default ``~/.cache/mxlab/``) maps a file's resolved path to its
size, modification time and the digest it was verified against; a file whose size and time still match skips
the hash on later reads. Any change to the file, or another expected digest, hashes it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
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


# ---------------------------------------------------------------- the record of verified files

def record_path() -> Path:
    base = os.environ.get("MXLAB_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mxlab"
    return Path(base) / "verified.json"


def _read_records() -> dict:
    try:
        return json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}


def _record_of(path: Path, check: Check) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, check.algorithm: check.expected}


def already_verified(path: Path, check: Check) -> bool:
    return _read_records().get(str(path.resolve())) == _record_of(path, check)


def record_verified(path: Path, check: Check) -> None:
    records = _read_records()
    records[str(path.resolve())] = _record_of(path, check)
    atomic_write(record_path(), json.dumps(records, indent=1))


# ---------------------------------------------------------------- reading and downloading

def read_verified(path: Path, check: Check, how: str) -> bytes:
    """``check.read`` of the file at ``path``, refused unless it has the expected digest (or a record says so)."""
    try:
        content = check.read(path.read_bytes())
    except UNREADABLE as exc:
        raise DataError(f"{path}: cannot be read ({exc}). {how}") from None
    if not already_verified(path, check):
        got = check.digest(content)
        if got != check.expected:
            raise check.mismatch(path, got, how)
        record_verified(path, check)
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
