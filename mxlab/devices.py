"""Which contexts to train on, and the CUDA 11 runtime for GPU installs.

``mxnet-cu112`` links the CUDA 11 libraries by soname. The ``nvidia-*-cu11`` wheels ship them under
``site-packages/nvidia/<part>/lib``, which the dynamic loader does not search, so :func:`preload_cuda`
loads them by path, with ``RTLD_GLOBAL``, before ``import mxnet``. No system CUDA toolkit is needed;
the driver's ``libcuda.so.1`` must still come from the system.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import re
import site
import sys
from pathlib import Path

# Sonames mxnet-cu112 1.9.1 links, in an order where each one's dependencies come before it.
CUDA_LIBRARIES = (
    "libcudart.so.11.0",
    "libnvToolsExt.so.1",
    "libnvrtc.so.11.2",
    "libcublasLt.so.11",
    "libcublas.so.11",
    "libcufft.so.10",
    "libcurand.so.10",
    "libcusolver.so.11",
    "libcudnn.so.8",
    "libnccl.so.2",
)
GPU_DISTRIBUTIONS = ("mxnet-cu112",)


class DeviceError(RuntimeError):
    """The devices asked for cannot be used."""


def gpu_build_installed() -> bool:
    return installed_build() in GPU_DISTRIBUTIONS


def find_cuda_libraries(search_dirs: list[Path] | None = None) -> dict[str, Path]:
    """Map each soname in :data:`CUDA_LIBRARIES` to the file that provides it under ``nvidia/*/lib``."""
    if search_dirs is None:
        search_dirs = [Path(p) for p in (*site.getsitepackages(), site.getusersitepackages(), *sys.path) if p]
    found: dict[str, Path] = {}
    for base in search_dirs:
        for lib_dir in sorted(Path(base).glob("nvidia/*/lib")):
            for soname in CUDA_LIBRARIES:
                candidate = lib_dir / soname
                if soname not in found and candidate.exists():
                    found[soname] = candidate
    return found


def preload_cuda(search_dirs: list[Path] | None = None, loader=None) -> list[str]:
    """Load the wheel-provided CUDA libraries globally; returns the sonames still missing."""
    loader = loader or ctypes.CDLL
    found = find_cuda_libraries(search_dirs)
    for soname in CUDA_LIBRARIES:
        if soname in found:
            loader(str(found[soname]), mode=ctypes.RTLD_GLOBAL)
    return [s for s in CUDA_LIBRARIES if s not in found]


_IMPORTED = False

# Imported by `import mxnet` for what mxlab never uses: scikit-learn only to give the retired FeedForward API
# (mxnet.model) its estimator base class, with scipy and pandas behind it, a fifth to a third of `import mxnet` here;
# scipy.stats only for the entropy calibration of INT8 quantization and MXNet's own test helpers, 0.28 s more
# (benchmarks/README.md, attempts 19 and 33). MXNet falls back when either import fails.
SKIPPED_BY_MXNET = ("sklearn", "scipy.stats")


@contextlib.contextmanager
def _hidden(modules: tuple[str, ...]):
    """``import`` of each of ``modules`` fails with ImportError for the duration, unless it is imported already;
    afterwards they import as usual (MLflow or Optuna may still want them)."""
    hidden = [m for m in modules if m not in sys.modules]
    for module in hidden:
        sys.modules[module] = None
    try:
        yield
    finally:
        for module in hidden:
            if sys.modules.get(module, ...) is None:
                del sys.modules[module]


def mxnet_reason(exc: BaseException) -> str:
    """Why an MXNet call failed: its errors carry the C++ stack, and the last line says why."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    return lines[-1].removeprefix("MXNetError: ")


def import_mxnet():
    """``import mxnet`` for every mxlab module: first the compatibility layer (what newer numpy and Python
    removed, see :mod:`mxlab.compat`), then the CUDA runtime when the GPU build is installed."""
    global _IMPORTED
    from mxlab import compat

    compat.apply()
    if not _IMPORTED and gpu_build_installed():
        missing = preload_cuda()
        if missing:
            raise DeviceError(f"mxnet-cu112 is installed but these CUDA libraries were not found in the nvidia "
                              f"wheels: {', '.join(missing)}; run `make setup GPU=cu112`")
        try:
            ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        except OSError:
            raise DeviceError("mxnet-cu112 is installed but no NVIDIA driver was found (libcuda.so.1 is missing): "
                              "install the driver, or the CPU build with `make setup`") from None
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    with _hidden(SKIPPED_BY_MXNET):
        import mxnet

    _IMPORTED = True
    return mxnet


DEVICES_ALLOWED = "auto, cpu, gpu, gpu:0,1 or cpu:0,1"


def parse_device(text: str, num_gpus: int) -> list[tuple[str, int]]:
    """``auto|cpu|gpu|gpu:0,1|cpu:0,1`` to a list of (device type, id); ``auto`` is every GPU, else the CPU."""
    match = re.fullmatch(r"(auto|cpu|gpu)(?::(\d+(?:,\d+)*))?", text)
    if not match or (match.group(1) == "auto" and match.group(2)):
        raise DeviceError(f"train.device: got {text!r}; allowed: {DEVICES_ALLOWED}")
    kind, ids = match.group(1), match.group(2)
    if kind == "auto":
        return [("gpu", i) for i in range(num_gpus)] or [("cpu", 0)]
    if kind == "gpu" and num_gpus == 0:
        raise DeviceError(f"train.device={text}: no GPU is visible to MXNet (the CPU build is installed, or no "
                          f"driver); use train.device=cpu")
    if ids is None:
        return [(kind, i) for i in range(num_gpus)] if kind == "gpu" else [("cpu", 0)]
    chosen = [int(i) for i in ids.split(",")]
    if len(set(chosen)) != len(chosen):
        raise DeviceError(f"train.device={text}: a device is named twice")
    if kind == "gpu" and max(chosen) >= num_gpus:
        raise DeviceError(f"train.device={text}: only {num_gpus} GPU(s) visible (ids 0..{num_gpus - 1})")
    return [(kind, i) for i in chosen]


def installed_build() -> str:
    """The MXNet distribution installed: ``mxnet-cu112`` (GPU build) or ``mxnet`` (CPU build)."""
    for dist in GPU_DISTRIBUTIONS:
        try:
            importlib.metadata.version(dist)
            return dist
        except importlib.metadata.PackageNotFoundError:
            pass
    return "mxnet"


def num_gpus() -> int:
    """GPUs MXNet can use: 0 with the CPU build (whose num_gpus() still asks the driver)."""
    return import_mxnet().context.num_gpus() if gpu_build_installed() else 0


def contexts(text: str = "auto") -> list:
    """The MXNet contexts for a ``train.device`` string; several contexts train data-parallel."""
    mx = import_mxnet()
    num_gpus_seen = num_gpus()
    return [mx.gpu(i) if kind == "gpu" else mx.cpu(i) for kind, i in parse_device(text, num_gpus_seen)]


def describe(ctx_list) -> str:
    return ",".join(str(c) for c in ctx_list)


# Build features worth knowing, by MXNet's name: GPU support, oneDNN (named MKLDNN in 1.9) and the parameter server.
FEATURES = {"cuda": "CUDA", "cudnn": "CUDNN", "nccl": "NCCL", "onednn": "MKLDNN", "dist_kvstore": "DIST_KVSTORE"}


def build_features() -> dict[str, str]:
    """The installed mxnet's version, distribution and build features (``mxnet.cuda``: ``true``/``false``...)."""
    mx = import_mxnet()
    features = mx.runtime.Features()
    return {"mxnet.version": mx.__version__, "mxnet.build": installed_build(),
            **{f"mxnet.{key}": str(features.is_enabled(name)).lower() for key, name in FEATURES.items()}}
