"""What MXNet 1.9.1 still reads from numpy and the standard library after newer versions removed it.

MXNet is retired (Apache Attic, 2023): no upstream fix will come. ``apply()`` puts back, in memory and only
where missing, the names ``import mxnet`` and its Python frontend use. :func:`mxlab.devices.import_mxnet` calls it
before every import of MXNet in mxlab, and so does the pyfunc model when it loads in a fresh process. Nothing
installed is edited. Facts measured here: Python 3.12 + numpy 1.26 needs the aliases numpy 1.24 removed and
``distutils``; Python 3.13 + numpy 2 also needs the names numpy 2.0 removed (listed below).
"""
from __future__ import annotations

import builtins
import importlib.util
import sys

import numpy as np

# numpy 1.24 removed these aliases of the builtins; mxnet/numpy/utils.py and others read np.bool at import.
BUILTIN_ALIASES = {name: getattr(builtins, name) for name in ("bool", "int", "float", "object", "complex", "str")}

# numpy 2.0 removed these constants; mxnet/numpy/__init__.py re-exports them at import.
CONSTANTS = {"PZERO": 0.0, "NZERO": -0.0, "NAN": float("nan"), "NaN": float("nan"), "Inf": float("inf"),
             "NINF": float("-inf"), "PINF": float("inf")}

# numpy 2.0 removed these scalar-type aliases; mxnet's dtype tables (mxnet/numpy, ndarray) name them.
TYPE_ALIASES = {"float_": np.float64, "complex_": np.complex128}


def _asfarray(a, dtype=np.float64):
    """numpy 1.x's asfarray: an array of an inexact (float) type."""
    dtype = np.dtype(dtype)
    return np.asarray(a, dtype=dtype if np.issubdtype(dtype, np.inexact) else np.float64)


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    return np.isin(ar1, ar2, assume_unique=assume_unique, invert=invert).ravel()


def _msort(a):
    return np.sort(a, axis=0)


# numpy 2.0 removed (or is removing) these function aliases; mxnet/numpy/fallback.py binds them at import.
# Each maps to what numpy itself names as the replacement.
FUNCTION_ALIASES = {
    "alltrue": lambda: np.all, "sometrue": lambda: np.any, "product": lambda: np.prod,
    "cumproduct": lambda: np.cumprod, "round_": lambda: np.round, "row_stack": lambda: np.vstack,
    "trapz": lambda: getattr(np, "trapezoid"), "in1d": lambda: _in1d, "msort": lambda: _msort,
    "asfarray": lambda: _asfarray,
}

# numpy 1.20 moved the financial functions to numpy-financial; mxnet/numpy/fallback.py still binds the names.
# They stay unusable: calling one raises, as numpy 1.2x's own placeholders did.
REMOVED_FUNCTIONS = ("mirr", "npv", "pmt", "ppmt", "pv", "rate")


class RemovedInNumpy(AttributeError):
    """A numpy function MXNet names but no installed numpy provides."""


def _removed(name: str):
    def removed(*args, **kwargs):
        raise RemovedInNumpy(f"numpy.{name} was removed from numpy (the financial functions moved to the "
                             f"numpy_financial package in numpy 1.20); mxnet.numpy.{name} cannot be used")
    removed.__name__ = name
    removed.__qualname__ = name
    removed._mxlab_removed = True
    return removed


def _missing(name: str) -> bool:
    """True when numpy does not provide ``name`` (numpy 2 raises AttributeError for what it removed)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            getattr(np, name)
        except AttributeError:
            return True
    return False


_applied: list[str] | None = None


def apply() -> list[str]:
    """Restore what MXNet 1.9.1 reads and this numpy/Python lacks; returns the names restored (idempotent)."""
    global _applied
    if _applied is not None:
        return list(_applied)
    restored = []
    for table in (BUILTIN_ALIASES, CONSTANTS, TYPE_ALIASES):
        for name, value in table.items():
            if _missing(name):
                setattr(np, name, value)
                restored.append(name)
    for name, make in FUNCTION_ALIASES.items():
        if _missing(name):
            setattr(np, name, make())
            restored.append(name)
    for name in REMOVED_FUNCTIONS:
        if _missing(name):
            setattr(np, name, _removed(name))
            restored.append(name)
    if _ensure_distutils():
        restored.append("distutils")
    _applied = restored
    return list(restored)


def _ensure_distutils() -> bool:
    """Python 3.12 removed distutils (mxnet imports distutils.version); setuptools ships a copy it installs
    on import. True when that copy had to be put in place."""
    if "distutils" in sys.modules or importlib.util.find_spec("distutils") is not None:
        return False
    try:
        import setuptools  # noqa: F401  (its import puts setuptools' distutils on the import path)
    except ImportError:
        raise ImportError(f"Python {sys.version_info[0]}.{sys.version_info[1]} has no distutils, which mxnet "
                          f"1.9.1 imports: install setuptools (`make setup` does)") from None
    return importlib.util.find_spec("distutils") is not None


def status() -> dict:
    """What the layer did in this process, for ``mxlab doctor``."""
    return {"python": ".".join(map(str, sys.version_info[:3])), "numpy": np.__version__,
            "applied": _applied is not None, "restored": list(_applied or [])}
