"""Where studies live: the storage URL, its password kept out of sight, and an Optuna storage whose tables exist.

``--storage URL``, else ``MXLAB_OPTUNA_STORAGE``, else ``sqlite:///<root>/mlruns/optuna.db``. sqlite is for one
worker; several workers share a PostgreSQL database.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from mxlab import workspace
from mxlab.workspace import driver_url, redact  # noqa: F401  (the one redaction, re-exported for tuning)

HEARTBEAT_SECONDS = 60     # how often a running trial proves its worker alive


class _NoTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; mxlab says what failed in one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def quiet_optuna():
    """Heartbeats and stale-trial retry are marked experimental in Optuna; they are what scale-out relies on."""
    import optuna

    if os.environ.get("MXLAB_DEBUG") != "1":   # Optuna sets its logger to INFO when imported: one line a trial
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:   # records of optuna.* loggers reach these
        if not any(isinstance(f, _NoTraceback) for f in handler.filters):
            handler.addFilter(_NoTraceback())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def storage_url(url: str | None = None, root: Path | None = None) -> str:
    return workspace.optuna_url(url, root)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def open_storage(url: str, *, heartbeat: int | None = HEARTBEAT_SECONDS, on_stale=None):
    """An Optuna ``RDBStorage`` whose tables exist; with ``heartbeat``, ``on_stale(study, trial)`` handles a trial
    whose worker stopped beating."""
    import optuna

    kwargs: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if heartbeat:
        kwargs.update(heartbeat_interval=int(heartbeat), grace_period=int(2 * heartbeat),
                      heartbeat_stale_trial_callback=on_stale)
    if not url.startswith(("sqlite:", "postgresql", "mysql")):
        raise ValueError(f"study storage {redact(url)!r} is not supported; allowed: sqlite:///path/optuna.db "
                         f"(one worker) or postgresql://user:password@host:port/database (several workers)")
    with quiet_optuna():
        if is_sqlite(url):
            path = workspace.sqlite_path(url)
            if not path.is_absolute():
                raise ValueError(f"study storage {url} names a file relative to the current folder; allowed: an "
                                 f"absolute path (sqlite:////path/to/optuna.db), or unset for mlruns/optuna.db")
            # The schema is created once, under a lock beside the file, before any other process touches it.
            with workspace.file_lock(path.parent / f".{path.name}.lock"):
                return optuna.storages.RDBStorage(url, **kwargs)
        return optuna.storages.RDBStorage(driver_url(url), **kwargs)
