"""The MLflow 3 LoggedModel of a run: :mod:`mxlab.pyfunc_model` as code, the network's files, ``model.json``
(the card of :mod:`mxlab.packaging`), a signature, an input example and pip requirements written out.

Image models take several layouts and dtypes (see :mod:`mxlab.pyfunc_model`), which no fixed-shape tensor
signature allows (MLflow enforces rank and dtype before ``predict``): their input is declared as an array of
any numbers, and the accepted layouts are written in the model's metadata. Outputs and parameters are exact.
"""
from __future__ import annotations

import contextlib
import functools
import json
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

MXNET_DISTRIBUTIONS = ("mxnet", "mxnet-cu112")


@functools.cache   # once a process: each version lookup scans the installed distributions
def pip_requirements() -> tuple[str, ...]:
    """Pinned to this environment, written rather than inferred (inference loads the model: seconds)."""
    import mlflow

    pins = [f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]
    for dist in (*MXNET_DISTRIBUTIONS, "pandas", "pyyaml"):
        try:
            pins.append(f"{dist}=={importlib_metadata.version(dist)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return tuple(pins)


@contextlib.contextmanager
def pins_checked_by_version():
    """MLflow checks a model's pins against this environment (``warn_dependency_requirement_mismatches``) by
    looking up each one's installed version. Before its first check in a process it maps every installed
    distribution to its modules (``packages_distributions``: 0.2-0.3 s, 7 % of ``mxlab run linreg``), which it
    reads only for a pin whose distribution has no metadata. mxlab's pins come from that metadata
    (:func:`pip_requirements`), so while mxlab logs its model the map is empty, and it is put back after: anything
    else in the process still gets MLflow's own. No setting exists for this; if MLflow renames the map, the check
    just builds it again (a test says so)."""
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", False) is not None:   # built already, or renamed
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {}
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None


def signature(card: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    task = card.get("task")
    if task == "language_model":
        # Unnamed: a list of strings, or a frame with one column of them (named ``prefix`` or not).
        return ModelSignature(Schema([ColSpec("string")]),
                              Schema([ColSpec("string", "prefix"), ColSpec("string", "text")]),
                              ParamSchema([ParamSpec("length", "long", int(card.get("generate_length", 50)))]))
    inputs = Schema([TensorSpec(np.dtype(object), (-1,))])
    if task == "classification" and "labels" in card:
        outputs = Schema([ColSpec("long", "class_id"), ColSpec("string", "label"),
                          *[ColSpec("double", f"prob_{label}") for label in card["labels"]]])
    else:
        outputs = Schema([ColSpec("double", "prediction")])
    return ModelSignature(inputs, outputs)


def input_layouts(card: dict) -> str:
    if card.get("task") == "language_model":
        return "a 'prefix' column of strings (characters of the training text); parameter 'length'"
    if "image" in card:
        c, h, w = card["input_shape"]
        return (f"N x {c} x H x W, N x H x W or N x H*W images (any square size, resized to {h} x {w}); "
                f"integers 0-255 or floats 0-1")
    return f"N x {' x '.join(map(str, card['input_shape']))} numbers"


def log(run_id: str, folder: Path, artifacts: dict, card: dict, example, *, tracking_uri: str):
    """Logs the model named ``model``, linked to ``run_id`` (the run's "Logged models"); returns its ModelInfo."""
    import mlflow
    from mlflow.models import Model

    card_path = folder / "model.json"
    card_path.write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
    files = {k: str(v) for k, v in {**artifacts, "card": card_path}.items()}
    c = mlflow.MlflowClient(tracking_uri)
    run = c.get_run(run_id)
    # Created here, in the run's experiment (Model.log alone would put it in the active, default one).
    model = c.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id,
                                  params=dict(run.data.params), tags={"mxlab.experiment": card.get("experiment", "")})
    from mxlab.tracking import process_tracking_uri

    # Model.log talks to the process-wide store; MLflow forces some warnings on: recorded, not shown.
    with process_tracking_uri(tracking_uri), warnings.catch_warnings(record=True), pins_checked_by_version():
        return Model.log(None, mlflow.pyfunc, name="model", run_id=run_id, model_id=model.model_id,
                         python_model=str(Path(__file__).with_name("pyfunc_model.py")), artifacts=files,
                         signature=signature(card), input_example=example, pip_requirements=list(pip_requirements()),
                         metadata={"mxlab.task": card.get("task"), "mxlab.experiment": card.get("experiment"),
                                   "input": input_layouts(card)})
