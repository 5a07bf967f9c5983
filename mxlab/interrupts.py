"""Stops from outside: SIGTERM and SIGHUP raised as exceptions in the main thread, so whatever runs is closed.

:class:`Terminated` is a ``KeyboardInterrupt``: everything that already treats Ctrl-C as "stop now, close the
run KILLED" (MLflow's lifecycle here, Optuna failing the trial and re-raising) treats a closed terminal or a
``kill`` the same way. The command line exits ``128 + signal`` (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

CAUGHT = (signal.SIGTERM, signal.SIGHUP)
# A stop raised inside a database call can leave its connection holding sqlite's write lock, so the trial or run it
# interrupted cannot be closed (measured on Python 3.13: 11 of 20 stops sent to a reporting Optuna trial, 1 of 10 to
# an MLflow run logging metrics). Such a stop is raised as the outermost call into these modules returns.
DATABASE_MODULES = ("sqlalchemy.", "optuna.storages.")


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


def _stop(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _in_finalizer(frame) -> bool:
    """Whether a stop raised here would be swallowed: inside a ``__del__`` or this module's own hook."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code is _finalizer_hook.__code__:
            return True
        frame = frame.f_back
    return False


def _outermost_database_frame(frame):
    """The frame nearest the bottom of the stack that runs a database library's code, or None."""
    outermost = None
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(DATABASE_MODULES):
            outermost = frame
        frame = frame.f_back
    return outermost


def _calls_untraced(frame, event, arg):
    return None


def _stop_on_return(frame, signum: int) -> None:
    """Raise the stop in the caller of ``frame``, the moment it returns: the trace hook a debugger uses to step
    out of a function, removed again on the way out."""
    def on_return(frame, event, arg):
        if event != "return":
            return on_return
        sys.settrace(None)
        raise _stop(signum)

    frame.f_trace_lines = False
    frame.f_trace = on_return
    sys.settrace(_calls_untraced)   # frames called from here on are not traced


def _deliver_again(signum: int) -> None:
    """Send a stop again from a helper thread as soon as the main thread has left the finalizer it landed in (the
    helper looks at the main thread's stack every millisecond). A real signal, so that it meets whatever handler
    is there by then, the default one included."""
    main = threading.main_thread().ident

    def when_out():
        while True:
            time.sleep(0.001)
            frame = sys._current_frames().get(main)
            if frame is None or not _in_finalizer(frame):
                break
        del frame
        os.kill(os.getpid(), signum)

    with contextlib.suppress(RuntimeError):   # no thread starts at interpreter shutdown: the process is ending
        threading.Thread(target=when_out, daemon=True, name="mxlab-stop").start()


def _raise_stop(signum, frame):
    """The handler of SIGINT, SIGTERM and SIGHUP in :func:`stops_as_exceptions`."""
    if _in_finalizer(frame):
        _deliver_again(signum)
        return
    database = _outermost_database_frame(frame)
    if database is not None and sys.gettrace() in (None, _calls_untraced):   # a debugger's tracing comes first
        _stop_on_return(database, signum)
        return
    raise _stop(signum)


def _finalizer_hook(unraisable) -> None:
    """What a finalizer raises, Python reports as "Exception ignored" and goes on. Such a stop is delivered again
    (a weakref callback, say: :func:`_raise_stop` sees only ``__del__``); the report of an MXNet object cut in
    half is dropped; every other report goes on to the hook that was there before."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _deliver_again(getattr(unraisable.exc_value, "signum", signal.SIGINT))
    elif not _half_built_mxnet_object(unraisable):
        _previous_hook(unraisable)


_previous_hook = sys.unraisablehook


@contextlib.contextmanager
def stops_as_exceptions():
    """Turn SIGTERM and SIGHUP into :class:`Terminated`, and Ctrl-C into ``KeyboardInterrupt`` as usual, in the
    main thread for the duration. A stop can land anywhere: MXNet runs a ``__del__`` for every array it frees,
    and a stop raised in one would be lost (Python prints it and goes on training), so it is delivered again once
    the ``__del__`` returns (see also :func:`_finalizer_hook`); one that lands in a database call is raised as
    the call returns (see ``DATABASE_MODULES``)."""
    global _previous_hook
    if sys.unraisablehook is not _finalizer_hook:
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _finalizer_hook
    if not _main_thread():
        yield
        return
    sigs = [*CAUGHT, *([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else [])]
    previous = {sig: signal.signal(sig, _raise_stop) for sig in sigs}
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
