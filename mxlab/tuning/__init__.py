"""Optuna studies over any experiment: storage, search space, study and objective, workers, the pruner callback.

Importing this package imports no Optuna; each module imports it where it is used.
"""
from mxlab.tuning.results import best, best_spec, dashboard  # noqa: F401
from mxlab.tuning.study import PRUNERS, SAMPLERS, TuneOptions, tune  # noqa: F401
