"""mxlab: experiment folders for Apache MXNet (Gluon), one runner, MLflow tracking and Optuna studies.

The Python API, for notebooks and scripts::

    import mxlab

    result = mxlab.run("lenet", {"train.epochs": 1, "data.limit": 2000}, track=False)
    result.metrics["test/acc"], result.history        # the last epoch, and every epoch
    spec = mxlab.load_spec("lenet", ["train.lr=0.5"])  # the resolved, validated spec
    study = mxlab.tune("lenet", 20, {"train.epochs": 2})

``import mxlab`` itself imports no MXNet, MLflow or Optuna; each call imports what it needs.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

__version__ = "0.1.0"
__all__ = ["run", "load_spec", "tune", "__version__"]


def _override_list(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"train.lr": 0.1}`` or ``["train.lr=0.1"]`` as the ``key=value`` strings the spec merges last."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        import yaml

        def text(value) -> str:
            return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

        return [f"{key}={text(value)}" for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise TypeError(f"overrides: got the string {overrides!r}; allowed: a dict of dotted keys "
                        f"({{'train.lr': 0.1}}) or a list of 'key=value' strings")
    return list(overrides)


def load_spec(name: str, overrides: Mapping[str, Any] | Sequence[str] | None = None, *, preset: str | None = None):
    """The experiment's resolved spec: defaults < ``experiment.yaml`` < ``preset`` < ``overrides``."""
    from mxlab import spec

    return spec.load_spec(name, _override_list(overrides), preset=preset)


def run(name: str, overrides: Mapping[str, Any] | Sequence[str] | None = None, *, track: bool = True,
        progress: bool = True, preset: str | None = None, callbacks: Sequence[Any] = ()):
    """Train experiment ``name``; returns a :class:`mxlab.runner.RunResult` (``run_id``, ``status``, ``metrics``
    of the last epoch, ``history``). ``track=False`` trains without MLflow: no run is created, nothing imported.
    ``callbacks``: :class:`mxlab.callbacks.Callback` instances of your own, called after mxlab's."""
    from mxlab.runner import run as run_spec

    return run_spec(load_spec(name, overrides, preset=preset), track=track, progress=progress, callbacks=callbacks)


def tune(name: str, trials: int, overrides: Mapping[str, Any] | Sequence[str] | None = None, **options) -> dict:
    """An Optuna study of ``trials`` more trials; ``options`` are those of ``mxlab tune`` (``sampler``,
    ``pruner``, ``study``, ``storage``, ``seed``, ``timeout``, ``workers``, ``preset``, ``progress``).

    Returns the study's summary: ``best_value``, ``best_params``, ``best_trial`` (its number), ``best_run_id``
    (its MLflow run), ``parent_run_id``, ...
    """
    from mxlab.tuning import TuneOptions, tune as tune_study

    return tune_study(name, _override_list(overrides), TuneOptions(trials=trials, **options))
