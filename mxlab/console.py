"""What a run prints while it trains, always on stderr (stdout is for results and ``--json``).

On a terminal, a tqdm bar per epoch with examples per second and the time left; elsewhere (CI, pipes, files)
plain lines: one per epoch, and one a minute inside a long epoch. The bar shows the running loss, read from
the device at most twice a second so that the reads do not slow the epoch; each epoch's line has every metric.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings

from mxlab.callbacks import Callback
from mxlab.workspace import redact

PLAIN_EVERY = 60.0   # seconds between plain progress lines inside one epoch
LOSS_EVERY = 0.5     # seconds between reads of the running loss for the bar
NOISY_LOGGERS = ("mlflow", "alembic", "optuna", "urllib3")


def quiet_libraries() -> None:
    """MLflow's store migrations ("Updating database tables"), monitors and Optuna's trial lines stay off, and
    library warnings (experimental APIs, type-hint advice) with them, in worker processes too; ``MXLAB_DEBUG=1``
    or ``python -W`` keeps the warnings."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")   # MLflow resets its logger when imported
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's SQL store logs each database error it re-raises with a traceback; mxlab reports it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    if not sys.warnoptions and os.environ.get("MXLAB_DEBUG") != "1":
        warnings.simplefilter("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")


def duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def number(value) -> str:
    """Four significant digits: enough to compare runs, short enough to read."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def format_metrics(metrics: dict) -> str:
    shown = []
    for key, value in metrics.items():
        if key == "perf/samples_per_second":
            shown.append(f"{value:,.0f} ex/s")
        elif key == "perf/epoch_seconds":
            shown.append(duration(value))
        elif key != "epoch":
            shown.append(f"{key} {number(value)}")
    return "  ".join(shown)


def ui_url(tracking_uri: str, experiment_id: str, run_id: str, port: int = 5000) -> str:
    """Where the run is seen: the tracking server itself, or ``mxlab ui`` on its default port."""
    base = (redact(tracking_uri).rstrip("/") if tracking_uri.startswith(("http://", "https://"))
            else f"http://127.0.0.1:{port}")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def announce(run_id: str, run_name: str, url: str, stream=None) -> None:
    stream = stream or sys.stderr
    local = url.startswith("http://127.0.0.1")
    stream.write(f"run {run_id} ({run_name})\n  {url}" + ("  (after `mxlab ui`)" if local else "") + "\n")
    stream.flush()


def stage(message: str, stream=None) -> None:
    """One line for work that takes seconds outside the epochs (loading data, packaging the model)."""
    stream = stream or sys.stderr
    stream.write(f"  {message}\n")
    stream.flush()


def summary(result, seconds: float | None = None) -> str:
    """The end of a run in two lines: status, epochs and time, then the last epoch's metrics."""
    epochs = len(result.history)
    head = f"run {result.run_id or '(untracked)'} {result.status}: {epochs} epoch{'s' * (epochs != 1)}"
    if seconds is not None:
        head += f" in {duration(seconds)}"
    metrics = {k: v for k, v in result.metrics.items() if not k.startswith("perf/")}
    return head + "\n  " + "  ".join(f"{k} {number(v)}" for k, v in sorted(metrics.items()))


class ConsoleProgress(Callback):
    """A bar per epoch on a terminal; otherwise plain lines. Writes to ``stream`` (stderr)."""

    def __init__(self, stream=None, bar: bool | None = None):
        self.stream = stream or sys.stderr
        self.bar = _isatty(self.stream) if bar is None else bar
        self._tqdm = None
        self._epoch_start = self._last_line = self._last_loss = 0.0
        self._loss: float | None = None

    def _examples_per_second(self, state, batch: int) -> float:
        elapsed = time.monotonic() - self._epoch_start
        return batch * state.spec.data.batch_size / elapsed if elapsed > 0 else float("nan")

    def on_batch_end(self, state, batch, num_batches):
        now = time.monotonic()
        if batch == 1 or self._epoch_start == 0.0:
            self._epoch_start = self._last_line = now
            self._loss = None
        rate = self._examples_per_second(state, batch)
        if self.bar:
            if self._tqdm is None:
                from tqdm import tqdm

                self._tqdm = tqdm(total=num_batches, file=self.stream, leave=False, unit="batch", mininterval=0.2,
                                  desc=f"epoch {state.epoch}/{state.spec.train.epochs}", dynamic_ncols=True)
            self._tqdm.update(batch - self._tqdm.n)
            if now - self._last_loss >= LOSS_EVERY or batch == num_batches:
                # Reading the loss waits for the device: twice a second costs nothing, every batch would.
                self._last_loss, self._loss = now, state.running_loss()
            shown = [f"loss {self._loss:.4g}"] if self._loss is not None else []
            if math.isfinite(rate):
                shown.append(f"{rate:,.0f} ex/s")
            self._tqdm.set_postfix_str("  ".join(shown), refresh=batch == num_batches)   # the full bar shows
        elif now - self._last_line >= PLAIN_EVERY and batch < num_batches:
            self._last_line = now
            left = (now - self._epoch_start) * (num_batches - batch) / batch
            loss = state.running_loss()
            self.stream.write(f"epoch {state.epoch}/{state.spec.train.epochs}  batch {batch}/{num_batches}  "
                              + (f"loss {loss:.4g}  " if loss is not None else "")
                              + f"{rate:,.0f} ex/s  {duration(left)} left in this epoch\n")
            self.stream.flush()

    def on_epoch_end(self, state, metrics):
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        self._epoch_start = 0.0
        self.stream.write(f"epoch {state.epoch}/{state.spec.train.epochs}  {format_metrics(metrics)}\n")
        self.stream.flush()

    def on_fit_end(self, state):
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
