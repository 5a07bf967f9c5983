"""The workspace: its root, the experiment folders and their ``model.py``, where the stores live, and locks.

The root is ``MXLAB_ROOT``, else the nearest folder upwards from the current one that holds ``experiments/``.
Each experiment is ``experiments/<name>/experiment.yaml``; beside it, an optional ``model.py`` registers the
experiment's own models and optional presets (``tuned.yaml``) hold overrides. The embedded stores live under
``<root>/mlruns``. Nothing here imports MXNet, MLflow or Optuna.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mxlab.coerce import SpecError

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
SPEC_FILE = "experiment.yaml"
MODEL_FILE = "model.py"


class WorkspaceError(SpecError):
    """No workspace, an unknown experiment, or an experiment folder that cannot be used."""


def root(start: Path | None = None) -> Path:
    """``MXLAB_ROOT``, else the nearest folder upwards from ``start`` (the cwd) that holds ``experiments/``."""
    if os.environ.get("MXLAB_ROOT"):
        return Path(os.environ["MXLAB_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir():
            return folder
    raise WorkspaceError(f"no workspace: no folder from {here} upwards holds experiments/; set MXLAB_ROOT")


def experiment_names(at: Path | None = None) -> list[str]:
    return sorted(p.parent.name for p in ((at or root()) / "experiments").glob(f"*/{SPEC_FILE}"))


def experiment_dir(name: str, at: Path | None = None) -> Path:
    if not NAME_RE.match(name):
        raise WorkspaceError(f"experiment name {name!r} is not allowed: use letters, digits, '_' and '-' only "
                             f"(no '/', no '..')")
    at = at or root()
    folder = at / "experiments" / name
    if not (folder / SPEC_FILE).is_file():
        known = ", ".join(experiment_names(at)) or "(none)"
        raise WorkspaceError(f"unknown experiment {name!r}: no {folder / SPEC_FILE}; known experiments: {known}")
    return folder


def presets(name: str, at: Path | None = None) -> list[str]:
    """The presets of an experiment: every ``<preset>.yaml`` in its folder beside ``experiment.yaml``."""
    folder = experiment_dir(name, at)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.name != SPEC_FILE)


def preset_path(name: str, preset: str, at: Path | None = None) -> Path:
    folder = experiment_dir(name, at)
    path = folder / f"{preset}.yaml"
    if not NAME_RE.match(preset) or preset == "experiment" or not path.is_file():
        known = ", ".join(presets(name, at)) or "(none)"
        raise WorkspaceError(f"experiment {name!r} has no preset {preset!r} ({path} is missing); its presets: "
                             f"{known}")
    return path


def import_experiment_model(folder: Path) -> None:
    """Import ``<folder>/model.py`` once, so that the models it registers can be named in its spec.

    Whatever the file raises (``sys.exit`` included) becomes one error naming the file, so one broken folder
    cannot silence the others.
    """
    path = folder / MODEL_FILE
    module_name = f"mxlab_experiments.{folder.name}.model"
    if not path.is_file() or module_name in sys.modules:
        return
    from mxlab import compat

    compat.apply()   # the file may import mxnet itself, as the book's code does
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise WorkspaceError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- stores

def store_dir(at: Path | None = None) -> Path:
    """``<root>/mlruns``: the embedded MLflow and Optuna stores and their artifacts (never committed)."""
    return (at or root()) / "mlruns"


def mlflow_uri(at: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_dir(at) / 'mlflow.db'}"


def mlflow_artifact_root(at: Path | None = None) -> Path:
    return store_dir(at) / "artifacts"


def optuna_url(url: str | None = None, at: Path | None = None) -> str:
    """``url``, else ``MXLAB_OPTUNA_STORAGE``, else the workspace's sqlite file."""
    return url or os.environ.get("MXLAB_OPTUNA_STORAGE") or f"sqlite:///{store_dir(at) / 'optuna.db'}"


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite:///...`` URL (absolute with four slashes, relative with three)."""
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


def driver_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 reads it as psycopg 3, mxlab ships
    psycopg2."""
    if url.startswith("postgresql://"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def redact(url: str) -> str:
    """A store URL without its password, fit for output, tags, logs and JSON."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` across processes: one of them creates a store's schema, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
