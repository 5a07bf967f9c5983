"""Python 3.10 to 3.13: the compatibility layer (mxlab/compat.py), the numpy each Python gets, and the same
metrics for the same seed on every supported Python (each in its own venv, in a subprocess)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mxlab import compat, doctor
from tests.conftest import REPO

IN_CI = os.environ.get("CI") == "true"
NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
NEEDS_LAYER = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (1, 24)


def np_attr(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # numpy 1.23 still warns on its deprecated aliases
        return getattr(np, name)


def test_every_name_mxnet_reads_is_there_after_apply():
    restored = compat.apply()
    assert compat.apply() == restored   # idempotent
    names = [*compat.BUILTIN_ALIASES, *compat.CONSTANTS, *compat.TYPE_ALIASES, *compat.FUNCTION_ALIASES,
             *compat.REMOVED_FUNCTIONS]
    for name in names:
        np_attr(name)   # raises AttributeError if still missing
    assert set(restored) <= {*names, "distutils"}
    assert bool(restored) == NEEDS_LAYER   # nothing is touched where numpy still has it all
    if NUMPY_2:
        assert np.bool is np.bool_   # numpy 2's own np.bool is kept, not replaced by the builtin
        assert {"PZERO", "float_", "in1d", "mirr"} <= set(restored)


def test_restored_names_behave_as_numpy_1_did():
    compat.apply()
    assert np_attr("product")([2, 3]) == 6 and list(np_attr("cumproduct")([2, 3])) == [2, 6]
    assert np_attr("round_")(1.26, 1) == pytest.approx(1.3)
    assert np_attr("alltrue")([True, False]) == False and np_attr("sometrue")([True, False]) == True  # noqa: E712
    assert np_attr("row_stack")(([1], [2])).shape == (2, 1)
    assert np_attr("trapz")([1.0, 2.0, 3.0]) == 4.0
    assert np_attr("float_") is np.float64 and np_attr("complex_") is np.complex128
    assert np_attr("NINF") == -math.inf and np_attr("PINF") == np_attr("Inf") == math.inf
    assert math.isnan(np_attr("NAN")) and math.isnan(np_attr("NaN"))
    assert np_attr("PZERO") == 0.0 and math.copysign(1, np_attr("NZERO")) == -1
    assert np_attr("int") is int and np_attr("object") is object


def test_replacement_functions_directly():
    """The functions compat defines for numpy 2, tested on every numpy (numpy 1 never calls them)."""
    assert compat._in1d([[1, 5], [2, 3]], [2, 5]).tolist() == [False, True, True, False]
    assert compat._in1d([1, 2], [2], invert=True).tolist() == [True, False]
    assert compat._msort(np.array([[3, 1], [1, 2]])).tolist() == [[1, 1], [3, 2]]
    assert compat._asfarray([1, 2]).dtype == np.float64
    assert compat._asfarray([1, 2], dtype=np.float32).dtype == np.float32
    assert compat._asfarray([1, 2], dtype=np.int32).dtype == np.float64   # never an integer array


def test_removed_financial_functions_raise_a_clear_error():
    compat.apply()
    with pytest.raises(Exception, match="numpy_financial") as err:
        np_attr("mirr")([-100, 50, 60], 0.1, 0.1)
    assert "\n" not in str(err.value)
    with pytest.raises(compat.RemovedInNumpy, match=r"^numpy.pv was removed .* mxnet.numpy.pv cannot be used$"):
        compat._removed("pv")(0.05, 10, 100)


def test_distutils_comes_from_setuptools_or_a_clear_error(monkeypatch):
    import importlib.util
    import types

    monkeypatch.delitem(sys.modules, "distutils", raising=False)
    specs = iter([None, object()])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: next(specs))
    monkeypatch.setitem(sys.modules, "setuptools", types.ModuleType("setuptools"))
    assert compat._ensure_distutils() is True

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setitem(sys.modules, "setuptools", None)   # an import of it then fails
    with pytest.raises(ImportError, match=r"has no distutils, which mxnet 1.9.1 imports: install setuptools"):
        compat._ensure_distutils()


@pytest.mark.slow   # subprocesses that import mxnet or create a store: `make test`, not test-fast
def test_a_fresh_process_imports_mxnet_only_through_the_layer():
    """Where numpy dropped what MXNet reads, a bare `import mxnet` fails and mxlab's import works."""
    bare = subprocess.run([sys.executable, "-c", "import mxnet"], capture_output=True, text=True, timeout=120)
    if NEEDS_LAYER:
        assert bare.returncode != 0 and "AttributeError" in bare.stderr
    else:
        assert bare.returncode == 0, bare.stderr
    code = ("from mxlab.devices import import_mxnet; mx = import_mxnet(); "
            "print(mx.nd.ones((2, 3)).sum().asscalar(), mx.np.in1d is not None)")
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.split() == ["6.0", "True"]


def test_an_experiment_model_file_imports_mxnet_itself_in_a_fresh_process(tmp_path):
    """An experiment's model.py reads like the book (a bare `import mxnet` at the top): mxlab applies the layer
    before importing it, so it works on every supported numpy."""
    (tmp_path / "model.py").write_text("from mxnet.gluon import nn\nLAYER = nn.Dense(3)\n")
    code = (f"import sys; from pathlib import Path; from mxlab.workspace import import_experiment_model; "
            f"import_experiment_model(Path({str(tmp_path)!r})); "
            f"print(type(sys.modules['mxlab_experiments.{tmp_path.name}.model'].LAYER).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Dense"]


def test_pyproject_gives_each_python_the_numpy_the_doctor_expects():
    from packaging.markers import Marker
    from packaging.requirements import Requirement

    text = (REPO / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10,<3.14"' in text
    numpy_reqs = [Requirement(r) for r in re.findall(r'"(numpy[^"]*)"', text)]
    for minor, trial in ((10, "1.23.5"), (11, "1.23.5"), (12, "1.26.4"), (13, "2.1.3")):
        env = {"python_version": f"3.{minor}", "python_full_version": f"3.{minor}.0"}
        applicable = [r for r in numpy_reqs if r.marker is None or r.marker.evaluate(env)]
        assert len(applicable) == 1, f"3.{minor}: {applicable}"
        assert applicable[0].specifier.contains(trial) and doctor.numpy_fits(trial, (3, minor))
        assert not applicable[0].specifier.contains("1.24.0" if minor < 13 else "1.26.4")
    # 3.13 installs mxnet with --no-deps (its metadata pins numpy<2): no extra may ask for it there.
    for extra in re.findall(r'"(mxnet[^"]*)"', text):
        assert Requirement(extra).marker == Marker("python_version < '3.13'")


# ---------------------------------------------------------------- the same metrics on every Python

TRAIN = r"""
import json, sys
import mxlab
from mxlab import devices
result = mxlab.run("softmax", sys.argv[1:], track=False, progress=False)
print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "build": devices.installed_build(),
                  "metrics": {k: result.metrics[k] for k in ("train/loss", "train/acc", "test/loss", "test/acc")}}))
"""
SOFTMAX = ("train.epochs=1", "data.limit=5000")
METRICS = ("train/loss", "train/acc", "test/loss", "test/acc")


def train_softmax(python: str | Path, workspace: Path, device: str = "cpu", env: dict | None = None) -> dict:
    """softmax for one epoch on 5,000 examples with the spec's fixed seed, in a fresh ``python`` process."""
    out = subprocess.run([str(python), "-c", TRAIN, *SOFTMAX, f"train.device={device}"], capture_output=True,
                         text=True, timeout=600, cwd=workspace,
                         env={**os.environ, "MXLAB_ROOT": str(workspace), **(env or {})})
    assert out.returncode == 0, f"{python}: {out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def platform_venvs() -> list[Path]:
    """``MXLAB_PLATFORM_VENVS`` (paths joined by ':'), else the repository's ``.venv*`` folders of the CPU build."""
    listed = os.environ.get("MXLAB_PLATFORM_VENVS")
    if listed:
        return [Path(p) if Path(p).is_absolute() else REPO / p for p in listed.split(os.pathsep) if p]
    return sorted(p for p in REPO.glob(".venv*") if (p / "bin" / "python").exists()
                  and not list(p.glob("lib/python3*/site-packages/mxnet_cu*.dist-info")))


@pytest.mark.slow
def test_same_seed_same_metrics_on_every_supported_python(workspace):
    venvs = platform_venvs()
    missing = [str(v) for v in venvs if not (v / "bin" / "python").exists()]
    assert not missing, f"MXLAB_PLATFORM_VENVS names venvs that do not exist: {missing}"
    runs = [train_softmax(v / "bin" / "python", workspace) for v in venvs]
    assert all(r["build"] == "mxnet" for r in runs), "the GPU build is compared in test_devices, not here"
    seen = sorted({r["python"] for r in runs})
    if not {"3.11", "3.13"} <= set(seen):
        message = (f"venvs for Python 3.11 and 3.13 are needed (make setup VENV=.venv-3.13 PYTHON=python3.13); "
                   f"found {seen} in {[str(v) for v in venvs]}")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    first = runs[0]
    for run in runs[1:]:
        for key in METRICS:
            assert run["metrics"][key] == pytest.approx(first["metrics"][key], abs=1e-6), (
                f"{key}: Python {run['python']} {run['metrics'][key]} != Python {first['python']} "
                f"{first['metrics'][key]}")
    assert 0.5 < first["metrics"]["test/acc"] < 0.9   # it trained
