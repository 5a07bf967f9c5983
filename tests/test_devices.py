"""Device strings and the discovery of the CUDA 11 libraries inside the nvidia wheels (on a fake folder)."""
from __future__ import annotations

import ctypes

import pytest

from mxlab import devices
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
    import mxnet as mx

    assert devices.contexts("cpu:0,1") == [mx.cpu(0), mx.cpu(1)]
    assert devices.contexts("auto") == [mx.cpu(0)]
