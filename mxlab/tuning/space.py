"""The search space: which keys a study may search, the default space, and values for one trial.

The default is ``train.lr`` on a log scale from a tenth to ten times the spec's value, ``train.wd`` on a log
scale over [1e-6, 1e-2], and every dropout rate the model can take over [0, 0.9]. Nothing here imports Optuna;
the spec consults :func:`default_space` and :func:`searchable_keys` when it resolves ``search.space``.
"""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Sequence

from mxlab.coerce import SpecError
from mxlab.registry import models

# A fraction held out for val/* when the spec trains on all of its training split: a study never tunes on test.
TUNE_VAL_FRACTION = 0.1


def searchable_keys(spec) -> dict[str, Any]:
    """Keys a study may search, with the spec's values: lr, wd, momentum (for the momentum optimizer), the
    clipping norm, the batch size, and the model's float options (dropout rates among them)."""
    out = {"train.lr": spec.train.lr, "train.wd": spec.train.wd, "data.batch_size": spec.data.batch_size}
    if spec.train.optimizer == "momentum":
        out["train.momentum"] = spec.train.momentum
    if spec.train.clip_gradient is not None:
        out["train.clip_gradient"] = spec.train.clip_gradient
    for key, (hint, default) in models.options(spec.model.name).items():
        if hint is float or typing.get_args(hint) == (float, type(None)):
            out[f"model.{key}"] = spec.model.options.get(key, default)
    return out


def default_space(spec) -> dict:
    """lr and wd on a log scale around the spec's own values, and every dropout rate the model can take: each
    dropout option is its own rate, and one the model refuses at the range's end (a second rate for a
    one-layer MLP) stays out."""
    from mxlab.spec import Range

    space = {
        "train.lr": Range(spec.train.lr / 10, spec.train.lr * 10, log=True),
        "train.wd": Range(1e-6, 1e-2, log=True),
    }
    for key in searchable_keys(spec):
        if key.startswith("model.") and "dropout" in key:
            try:
                models.get(spec.model.name)(**{**spec.model.options, key[len("model."):]: 0.9})
            except ValueError:
                continue
            space[key] = Range(0.0, 0.9)
    return space


def tuning_spec(name: str, overrides: Sequence[str] = (), root: Path | None = None, preset: str | None = None):
    """The spec a study trains, validated with its search space before any trial or run exists.

    Returns the spec and notes on what tuning changed (the validation hold-out).
    """
    from mxlab.spec import load_spec

    spec = load_spec(name, overrides, root, preset=preset)
    notes = []
    if spec.search.metric.startswith("val/") and spec.data.val_fraction == 0:
        spec = spec.replace(**{"data.val_fraction": TUNE_VAL_FRACTION})
        notes.append(f"search.metric is {spec.search.metric} but data.val_fraction is 0: holding out "
                     f"data.val_fraction={TUNE_VAL_FRACTION} of the training split for validation (the test set is "
                     f"never tuned on); pass data.val_fraction=... to choose another share")
    check_space(spec)
    return spec, notes


def check_space(spec) -> None:
    """Every range's ends must make a valid spec: ``train.momentum`` up to 1.5 is refused here, not mid-study."""
    if not spec.search.space:
        raise SpecError(f"{spec.path or spec.name}: search.space is empty; allowed: a mapping of dotted keys to "
                        f"{{low, high, log}}, e.g. train.lr: {{low: 0.01, high: 0.5, log: true}}")
    for key, rng in spec.search.space.items():
        for end in ("low", "high"):
            value = _cast(spec, key, getattr(rng, end))
            try:
                trial_spec = spec.replace(**{key: value})
                if key.startswith("model."):
                    models.get(trial_spec.model.name)(**trial_spec.model.options)   # the builder checks its options
            except (SpecError, ValueError) as exc:
                raise SpecError(f"{spec.path or spec.name}: search.space.{key}: {end}={getattr(rng, end)} does not "
                                f"make a valid experiment: {exc}") from None


def _cast(spec, key: str, value: float):
    return int(round(value)) if isinstance(searchable_keys(spec)[key], int) else float(value)


def suggest(trial, spec) -> dict[str, Any]:
    """One value per key of ``spec.search.space``; integers stay integers (``data.batch_size``)."""
    current = searchable_keys(spec)
    params = {}
    for key, rng in spec.search.space.items():
        if isinstance(current[key], int):
            params[key] = trial.suggest_int(key, int(round(rng.low)), int(round(rng.high)), log=rng.log)
        else:
            params[key] = trial.suggest_float(key, rng.low, rng.high, log=rng.log)
    return params


def baseline_params(spec) -> tuple[dict[str, Any], list[str]]:
    """The spec's own values for the searched keys: the first trial of a new study measures them.

    A value outside its range is moved to the nearest end, since Optuna cannot record it otherwise (``train.wd``
    0 on a log scale becomes the range's low end, about as little decay); the notes say what moved.
    """
    current = searchable_keys(spec)
    params, notes = {}, []
    for key, rng in spec.search.space.items():
        value = current[key]
        inside = min(max(value, _cast(spec, key, rng.low)), _cast(spec, key, rng.high))
        if inside != value:
            notes.append(f"baseline {key}={value} is outside the searched range [{rng.low:g}, {rng.high:g}]: "
                         f"the first trial uses {inside:g}")
        params[key] = inside
    return params, notes
