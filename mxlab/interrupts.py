"""Stops from outside: SIGTERM and SIGHUP raised as exceptions in the main thread, so whatever runs is closed.

:class:`Terminated` is a ``KeyboardInterrupt``: everything that already treats Ctrl-C as "stop now, close the
run KILLED" (MLflow's lifecycle here, Optuna failing the trial and re-raising) treats a closed terminal or a
``kill`` the same way. The command line exits ``128 + signal`` (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

CAUGHT = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP), raised in the main thread."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number; Ctrl-C is SIGINT."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def signal_name(exc: KeyboardInterrupt) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _half_built_mxnet_object(unraisable) -> bool:
    """An MXNet object (an array, a symbol, a cached graph, a kvstore) whose ``__init__`` a stop cut short before
    it stored its handle: it owns nothing, yet its ``__del__`` frees ``self.handle`` and Python prints that
    AttributeError as a traceback, at exit or whenever the object is collected."""
    exc, where = unraisable.exc_value, unraisable.object
    return isinstance(exc, AttributeError) and getattr(exc, "name", None) == "handle" \
        and getattr(where, "__name__", "") == "__del__" and getattr(where, "__module__", "").startswith("mxnet.")


def _quiet_half_built_mxnet_objects() -> None:
    """Drop exactly that report (a stop prints one line, not a traceback) and pass every other one on."""
    previous = sys.unraisablehook
    if getattr(previous, "mxlab_quiets_half_built_objects", False):
        return

    def hook(unraisable):
        if not _half_built_mxnet_object(unraisable):
            previous(unraisable)

    hook.mxlab_quiets_half_built_objects = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def stops_as_exceptions():
    """Turn SIGTERM and SIGHUP into :class:`Terminated` in the main thread for the duration. A stop can land
    anywhere, even inside an MXNet constructor, so the report of an object cut in half stays quiet from here on
    (it may be collected later, at exit)."""
    _quiet_half_built_mxnet_objects()
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in CAUGHT}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def stops_deferred():
    """Hold SIGINT, SIGTERM and SIGHUP for the duration (a status write must not be cut in half), then deliver
    the last one that arrived; main thread only. Yields the list of signals held so far, so that a loop can
    end itself when one arrives."""
    arrived: list[int] = []
    if not _main_thread():
        yield arrived
        return
    sigs = (signal.SIGINT, *CAUGHT)
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in sigs}
    try:
        yield arrived
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if arrived:
            signal.raise_signal(arrived[-1])
