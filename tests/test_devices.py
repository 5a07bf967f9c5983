"""Device strings, the discovery of the CUDA 11 libraries inside the nvidia wheels (on a fake folder), and the
GPU build itself (mxnet-cu112) up to the driver, with a stand-in driver library (tests/gpu_stub/libcuda.c)."""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mxlab import compat, devices
from mxlab.devices import CUDA_LIBRARIES, DeviceError, find_cuda_libraries, parse_device, preload_cuda


@pytest.fixture
def fake_site(tmp_path):
    """A site-packages with the nvidia wheels' layout: nvidia/<part>/lib/<soname>."""
    layout = {
        "cuda_runtime": ["libcudart.so.11.0"], "nvtx": ["libnvToolsExt.so.1"], "cuda_nvrtc": ["libnvrtc.so.11.2"],
        "cublas": ["libcublasLt.so.11", "libcublas.so.11"], "cufft": ["libcufft.so.10"],
        "curand": ["libcurand.so.10"], "cusolver": ["libcusolver.so.11"], "cudnn": ["libcudnn.so.8"],
        "nccl": ["libnccl.so.2"],
    }
    for part, names in layout.items():
        lib = tmp_path / "nvidia" / part / "lib"
        lib.mkdir(parents=True)
        for name in names:
            (lib / name).write_bytes(b"")
    (tmp_path / "nvidia" / "cudnn" / "lib" / "libcudnn.so.9").write_bytes(b"")   # a wrong major is ignored
    return tmp_path


def test_finds_every_library_in_the_wheels(fake_site):
    found = find_cuda_libraries([fake_site])
    assert set(found) == set(CUDA_LIBRARIES)
    assert found["libcudnn.so.8"] == fake_site / "nvidia" / "cudnn" / "lib" / "libcudnn.so.8"


def test_preload_loads_globally_in_dependency_order(fake_site):
    loaded = []
    missing = preload_cuda([fake_site], loader=lambda path, mode: loaded.append((path, mode)))
    assert missing == []
    assert [p.rsplit("/", 1)[1] for p, _ in loaded] == list(CUDA_LIBRARIES)
    assert all(mode == ctypes.RTLD_GLOBAL for _, mode in loaded)


def test_preload_reports_what_is_missing(fake_site):
    (fake_site / "nvidia" / "nccl" / "lib" / "libnccl.so.2").unlink()
    assert preload_cuda([fake_site], loader=lambda path, mode: None) == ["libnccl.so.2"]


def test_gpu_build_without_driver_fails_in_one_line(fake_site, monkeypatch):
    monkeypatch.setattr(devices, "_IMPORTED", False)
    monkeypatch.setattr(devices, "gpu_build_installed", lambda: True)
    monkeypatch.setattr(devices, "find_cuda_libraries", lambda dirs=None: find_cuda_libraries([fake_site]))

    def fake_cdll(path, mode=0):
        if path == "libcuda.so.1":
            raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(devices.ctypes, "CDLL", fake_cdll)
    with pytest.raises(DeviceError) as err:
        devices.import_mxnet()
    message = str(err.value)
    assert "\n" not in message and "no NVIDIA driver" in message and "libcuda.so.1" in message


@pytest.mark.parametrize("text, gpus, expected", [
    ("auto", 0, [("cpu", 0)]),
    ("auto", 2, [("gpu", 0), ("gpu", 1)]),
    ("cpu", 0, [("cpu", 0)]),
    ("cpu:0,1", 0, [("cpu", 0), ("cpu", 1)]),
    ("gpu", 2, [("gpu", 0), ("gpu", 1)]),
    ("gpu:1", 2, [("gpu", 1)]),
])
def test_parse_device(text, gpus, expected):
    assert parse_device(text, gpus) == expected


@pytest.mark.parametrize("text, gpus, message", [
    ("gpu", 0, "no GPU is visible"),
    ("gpu:2", 2, "only 2 GPU"),
    ("gpu:0,0", 2, "named twice"),
    ("tpu", 0, "allowed: auto, cpu, gpu"),
    ("auto:1", 0, "allowed"),
])
def test_parse_device_errors(text, gpus, message):
    with pytest.raises(DeviceError, match=message):
        parse_device(text, gpus)


def test_contexts_on_this_machine():
    mx = devices.import_mxnet()

    assert devices.contexts("cpu:0,1") == [mx.cpu(0), mx.cpu(1)]
    assert devices.contexts("auto") == [mx.cpu(0)]


def test_import_mxnet_applies_the_compatibility_layer_first(monkeypatch):
    calls = []
    monkeypatch.setattr(devices, "_IMPORTED", False)
    monkeypatch.setattr(compat, "apply", lambda: calls.append("compat") or [])
    monkeypatch.setattr(devices, "gpu_build_installed", lambda: calls.append("cuda") or False)
    devices.import_mxnet()
    assert calls == ["compat", "cuda"]


def test_import_mxnet_leaves_scikit_learn_and_scipy_stats_out_and_importable():
    probe = ("import sys; from mxlab import devices; mx = devices.import_mxnet(); "
             "print('sklearn' in sys.modules, mx.model.BASE_ESTIMATOR is object); "
             "print('scipy.stats' in sys.modules, mx.contrib.quantization.stats is None); "
             "import sklearn.base, scipy.stats; print('sklearn' in sys.modules, 'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # not by MXNet; as usual afterwards
    assert out.stdout.split() == ["False", "True", "False", "True", "True", "True"]


def test_build_features_name_the_build():
    features = devices.build_features()
    assert features["mxnet.version"] == "1.9.1" and features["mxnet.build"] == devices.installed_build()
    assert set(features) == {"mxnet.version", "mxnet.build", *(f"mxnet.{k}" for k in devices.FEATURES)}
    assert features["mxnet.dist_kvstore"] == "true"   # the parameter server is in both wheels
    assert devices.num_gpus() == 0 and not devices.gpu_build_installed()


# ---------------------------------------------------------------- the GPU build, up to the driver

STUB_SOURCE = Path(__file__).parent / "gpu_stub" / "libcuda.c"
PROBE = r"""
import json, sys
from mxlab import devices
mx = devices.import_mxnet()
maps = open("/proc/self/maps").read()
print(json.dumps({"features": devices.build_features(), "num_gpus": devices.num_gpus(),
                  "auto": devices.describe(devices.contexts("auto")),
                  "loaded": sorted({line.split()[-1] for line in maps.splitlines()
                                    if "/nvidia/" in line or "libcuda.so" in line})}))
"""


def gpu_venv() -> Path:
    """``MXLAB_GPU_VENV``: a venv built by ``make setup GPU=cu112`` (CI builds one; without it CI fails)."""
    value = os.environ.get("MXLAB_GPU_VENV")
    if not value:
        if os.environ.get("CI") == "true":
            pytest.fail("MXLAB_GPU_VENV is not set: CI builds the GPU environment and must test it")
        pytest.skip("MXLAB_GPU_VENV not set (make setup GPU=cu112 VENV=.venv-cu112; MXLAB_GPU_VENV=.venv-cu112)")
    venv = Path(value) if Path(value).is_absolute() else Path(__file__).resolve().parents[1] / value
    assert (venv / "bin" / "python").exists(), f"MXLAB_GPU_VENV={value}: no {venv}/bin/python"
    return venv


def cu_symbols(library: Path, which: str) -> set[str]:
    out = subprocess.run(["nm", "-D", which, str(library)], capture_output=True, text=True, check=True).stdout
    names = (line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip())
    return {name for name in names if re.fullmatch(r"cu[A-Z]\w*", name)}   # the driver API: cuInit, cuLaunchKernel...


@pytest.mark.slow
def test_gpu_build_up_to_the_driver(tmp_path, workspace):
    """The GPU build on a machine with no GPU: what this shows and what it cannot is in the README."""
    venv = gpu_venv()
    python = venv / "bin" / "python"
    # The stand-in driver (see its source): a libcuda.so.1 whose every entry point answers "no device".
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    subprocess.run([shutil.which("gcc") or "gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror",
                    "-Wl,-soname,libcuda.so.1", "-o", str(driver_dir / "libcuda.so.1"), str(STUB_SOURCE)],
                   check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    needed = cu_symbols(Path(site) / "mxnet" / "libmxnet.so", "--undefined-only")
    assert len(needed) >= 10 and needed <= cu_symbols(driver_dir / "libcuda.so.1", "--defined-only")
    env = {**os.environ, "LD_LIBRARY_PATH": str(driver_dir), "MXLAB_ROOT": str(workspace)}

    # Imported through mxlab: the CUDA 11 libraries from the wheels, the driver from the stand-in.
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    features = seen["features"]
    assert features["mxnet.build"] == "mxnet-cu112"
    assert (features["mxnet.cuda"], features["mxnet.cudnn"], features["mxnet.nccl"]) == ("true",) * 3
    assert seen["num_gpus"] == 0 and seen["auto"] == "cpu(0)"
    loaded = "\n".join(seen["loaded"])
    assert f"{site}/nvidia/cuda_runtime/lib/libcudart.so.11.0" in loaded
    assert f"{site}/nvidia/cudnn/lib/libcudnn.so.8" in loaded and str(driver_dir / "libcuda.so.1") in loaded
    bare = subprocess.run([str(python), "-c", "import mxlab.compat as c; c.apply(); import mxnet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert bare.returncode != 0 and "cannot open shared object file" in bare.stderr   # the preloading is needed

    # train.device=auto trains on the CPU, to the CPU build's metrics for the same seed.
    from tests.test_platform import METRICS, train_softmax

    on_gpu_build = train_softmax(python, workspace, device="auto", env={"LD_LIBRARY_PATH": str(driver_dir)})
    on_cpu_build = train_softmax(sys.executable, workspace, device="auto")
    for key in METRICS:
        assert on_gpu_build["metrics"][key] == pytest.approx(on_cpu_build["metrics"][key], abs=1e-6), key

    # train.device=gpu: one line saying why, no traceback.
    mxlab = venv / "bin" / "mxlab"
    run = subprocess.run([str(mxlab), "run", "softmax", "train.epochs=1", "data.limit=512", "train.device=gpu"],
                         capture_output=True, text=True, env={**env, "MLFLOW_TRACKING_URI":
                                                              f"sqlite:///{tmp_path / 'mlflow.db'}"}, timeout=300)
    errors = [line for line in run.stderr.splitlines() if line.startswith("mxlab: error:")]
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert len(errors) == 1 and "train.device=gpu: no GPU is visible" in errors[0] and "train.device=cpu" in errors[0]

    # The doctor names the build and says "no device".
    doctor = subprocess.run([str(mxlab), "doctor", "--json"], capture_output=True, text=True, env=env, timeout=300)
    checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert "GPU build (mxnet-cu112): CUDA on, cuDNN on, NCCL on" in checks["mxnet"]["detail"]
    assert checks["gpus"]["status"] == "warn" and "no device: mxnet-cu112 sees 0 GPUs" in checks["gpus"]["detail"]
    assert "all 10 CUDA 11 libraries" in checks["cuda"]["detail"] and "(no device)" in checks["cuda"]["detail"]
