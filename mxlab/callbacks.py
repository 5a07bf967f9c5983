"""Consumers of the fit loop's metric dicts: checkpoints, early stopping, text samples (console progress is in
:mod:`mxlab.console`).

MLflow's logger lives in :mod:`mxlab.tracking` and Optuna's pruner in :mod:`mxlab.tuning.trials`: each is one
more callback of this shape.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from mxlab.devices import mxnet_reason


class Callback:
    """Every hook is optional; ``state`` is :class:`mxlab.train.FitState`."""

    def on_fit_begin(self, state) -> None: ...

    def on_batch_end(self, state, batch: int, num_batches: int) -> None: ...

    def on_epoch_end(self, state, metrics: dict) -> None: ...

    def on_fit_end(self, state) -> None: ...


# How last.states is keyed: by the position of each parameter in the network (see train.GluonUpdater). Earlier
# checkpoints went by sorted layer names, which differ between copies of a network; resume refuses those.
STATES_ORDER = "network"


class Checkpoint(Callback):
    """After every epoch: ``last.params``, ``last.states`` (optimizer) and ``last.json`` (epoch, history, and the
    optimizer state's SHA-256). No random state is kept: every epoch reseeds from ``train.seed + epoch``.

    Together they let training continue at the next epoch (``mxlab run NAME --resume RUN_ID``). ``best.params``
    follows the ``monitor`` metric when the run produces it; ``final.params`` is written at the end. Files are
    replaced atomically, so a crash mid-write leaves the previous epoch intact.
    """

    # What --resume needs of a run after every epoch; best.params only once the monitored metric exists.
    RESUME_FILES = ("last.json", "last.params", "last.states", "best.params")

    def __init__(self, folder: Path, monitor: str | None = None, mode: str | None = None):
        """``monitor`` and ``mode`` (the task's direction for it) choose best.params; without them there is none."""
        if monitor is not None and mode not in ("maximize", "minimize"):
            raise ValueError(f"Checkpoint(monitor={monitor!r}): mode {mode!r}; allowed: maximize or minimize")
        self.folder = Path(folder)
        self.monitor, self.mode = monitor, mode
        self.best = None

    def _atomic(self, name: str, write) -> None:
        tmp = self.folder / f".{name}.tmp"
        try:
            write(str(tmp))
        except Exception as exc:   # MXNet's writer: a full disk reads as "FileStream.Write incomplete"
            tmp.unlink(missing_ok=True)
            raise OSError(f"cannot write the checkpoint {self.folder / name}: {mxnet_reason(exc)}") from None
        os.replace(tmp, self.folder / name)

    def on_fit_begin(self, state):
        self.folder.mkdir(parents=True, exist_ok=True)
        for past in state.history:  # a resumed run keeps its best so far
            self._consider(past)

    def _consider(self, metrics) -> bool:
        value = metrics.get(self.monitor) if self.monitor else None
        if value is None or not math.isfinite(value):
            return False
        better = self.best is None or (value > self.best if self.mode == "maximize" else value < self.best)
        if better:
            self.best = value
        return better

    def on_epoch_end(self, state, metrics):
        self._atomic("last.params", state.net.save_parameters)
        self._atomic("last.states", state.updater.save_states)
        record = {
            "epoch": state.epoch,
            "history": state.history,
            # The optimizer state is a pickle: resuming loads it only if it still has this hash.
            "states_sha256": hashlib.sha256((self.folder / "last.states").read_bytes()).hexdigest(),
            "states_order": STATES_ORDER,
        }
        self._atomic("last.json", lambda p: Path(p).write_text(json.dumps(record)))
        if self._consider(metrics):
            self._atomic("best.params", state.net.save_parameters)

    def on_fit_end(self, state):
        self._atomic("final.params", state.net.save_parameters)


class EarlyStopping(Callback):
    """Stops training once ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    The fit loop ends after the epoch that asked for it, so that epoch is recorded and checkpointed like any.
    """

    def __init__(self, metric: str, patience: int, min_delta: float, mode: str):
        self.metric, self.patience, self.min_delta, self.mode = metric, patience, min_delta, mode
        self.best, self.stale = None, 0
        self.reason: str | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        gain = value - self.best if self.mode == "maximize" else self.best - value
        return gain > self.min_delta

    def on_fit_begin(self, state):
        for past in state.history:   # a resumed run keeps its count
            self._see(past)

    def _see(self, metrics) -> None:
        if self.metric not in metrics:
            raise KeyError(f"train.early_stopping.metric {self.metric!r} is not among this run's metrics: "
                           f"{', '.join(sorted(k for k in metrics if k != 'epoch'))}")
        value = metrics[self.metric]
        if self._improved(value):
            self.best, self.stale = value, 0
        else:
            self.stale += 1

    def on_epoch_end(self, state, metrics):
        self._see(metrics)
        if self.stale >= self.patience:
            self.reason = (f"early stopping at epoch {state.epoch}: {self.metric} did not improve on "
                           f"{self.best:.4g} by more than {self.min_delta:g} for {self.patience} epoch(s)")
            state.stop_reason = self.reason


class TextSampler(Callback):
    """Every ``every`` epochs, the book's ``predict_rnn`` continues each prefix by ``length`` characters, and the
    results go to ``<folder>/epoch_<n>.txt`` (a header line, then one generated text per prefix).

    ``on_write(path, epoch)`` receives each file written; tracking uses it to log the file to the MLflow run.
    The vocabulary comes from the data bundle (``idx_to_char``, ``char_to_idx``). A prefix character that the
    training text lacks is an error on the full corpus; with ``data.limit`` (a shrunken run) that prefix is
    noted as skipped in the file instead.
    """

    def __init__(self, folder: Path, every: int, prefixes, length: int, on_write=None):
        self.folder, self.every, self.prefixes, self.length = Path(folder), every, tuple(prefixes), length
        self.on_write = on_write
        self.skipped: dict[str, str] = {}

    def on_fit_begin(self, state):
        if not self.prefixes:
            raise ValueError(f"train.sample_every is {self.every} but train.sample_prefixes is empty; give prefixes "
                             f"(train.sample_prefixes=[床前,白日]) or set train.sample_every=0")
        extra = state.data.extra
        if "char_to_idx" not in extra:
            raise ValueError(f"train.sample_every needs a text dataset with a vocabulary (data.name: char_corpus), "
                             f"not {state.spec.data.name}")
        self.folder.mkdir(parents=True, exist_ok=True)
        for prefix in self.prefixes:
            unknown = sorted({c for c in prefix if c not in extra["char_to_idx"]})
            if not prefix or unknown:
                why = f"{', '.join(map(repr, unknown))} not in the training text" if unknown else "empty"
                if state.spec.data.limit is None:
                    raise ValueError(f"train.sample_prefixes: {prefix!r}: {why}; allowed: prefixes made of "
                                     f"characters of the corpus")
                self.skipped[prefix] = why

    def on_epoch_end(self, state, metrics):
        if state.epoch % self.every:
            return
        from mxlab.models.rnn import predict_rnn

        extra = state.data.extra
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.endswith("/ppl"))
        lines = [f"epoch {state.epoch}  {shown}".rstrip()]
        for prefix in self.prefixes:
            if prefix in self.skipped:
                lines.append(f"{prefix} (skipped: {self.skipped[prefix]})")
            else:
                lines.append(predict_rnn(state.net, prefix, self.length, extra["idx_to_char"], extra["char_to_idx"],
                                         state.ctx[0]))
        path = self.folder / f"epoch_{state.epoch}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.on_write is not None:
            self.on_write(path, state.epoch)
