"""``mxlab doctor [--json]``: the checklist to run first. One line per check: ok, warn or FAIL; exit 1 on a FAIL.

Python, numpy and the compatibility layer; MXNet's version and build; GPUs (each runs a small forward and
backward pass compared with the CPU's); the CUDA 11 libraries of a GPU build; the data and its checksums; the
MLflow store and Optuna storage (passwords hidden); runs left RUNNING by processes that are gone; free disk.
A check that raises becomes one FAIL line naming the error: the doctor itself never stops half-way.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))
CUDA_ERROR_NO_DEVICE = 100
FREE_DISK_WARN, FREE_DISK_FAIL = 5 << 30, 1 << 30   # datasets, checkpoints and MLflow artifacts need room


def hide_password(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def expected_numpy(version: tuple[int, int]) -> str:
    """The numpy ``make setup`` installs for a Python (pyproject.toml's markers)."""
    return {(3, 12): "1.26"}.get(version, "<1.24" if version < (3, 12) else ">=2")


def numpy_fits(numpy_version: str, version: tuple[int, int]) -> bool:
    major, minor = (int(p) for p in numpy_version.split(".")[:2])
    want = expected_numpy(version)
    return {"<1.24": (major, minor) < (1, 24), "1.26": (major, minor) == (1, 26)}.get(want, major >= 2)


# ---------------------------------------------------------------- Python, numpy, MXNet

def check_python():
    v = sys.version_info[:2]
    where = f"{'.'.join(map(str, sys.version_info[:3]))} ({sys.executable})"
    if v in SUPPORTED_PYTHONS:
        return OK, where
    return WARN, f"{where}: untested; mxlab supports Python 3.10 to 3.13 (`make setup PYTHON=python3.13`)"


def check_numpy():
    import numpy as np

    v = sys.version_info[:2]
    if numpy_fits(np.__version__, v):
        return OK, f"{np.__version__} (the one for Python {v[0]}.{v[1]}: numpy {expected_numpy(v)})"
    return WARN, (f"{np.__version__} on Python {v[0]}.{v[1]}: mxlab is tested with numpy {expected_numpy(v)} "
                  f"there (`make setup` installs it)")


def check_compat():
    from mxlab import compat

    restored = compat.apply()
    if not restored:
        return OK, "nothing to restore for MXNet 1.9.1 on this numpy and Python"
    return OK, f"restored {len(restored)} names MXNet 1.9.1 reads: {', '.join(restored)}"


def check_mxnet():
    from mxlab import devices

    f = devices.build_features()
    on = {k: f[f"mxnet.{k}"] == "true" for k in devices.FEATURES}
    kind = "GPU" if devices.gpu_build_installed() else "CPU"
    flags = ", ".join(f"{label} {'on' if on[k] else 'off'}" for k, label in
                      (("cuda", "CUDA"), ("cudnn", "cuDNN"), ("nccl", "NCCL"), ("onednn", "oneDNN"),
                       ("dist_kvstore", "dist kvstore")))
    status = OK if f["mxnet.version"] == "1.9.1" else WARN
    return status, f"{f['mxnet.version']}, {kind} build ({f['mxnet.build']}): {flags}"


def check_onednn():
    from mxlab import devices

    if devices.build_features()["mxnet.onednn"] == "true":
        return OK, "on (MKLDNN): fast CPU convolutions"
    return WARN, "off in this build (feature MKLDNN): CPU training is 2 to 7 times slower here"


# ---------------------------------------------------------------- GPUs and CUDA

def nvidia_smi() -> list[dict] | None:
    """GPUs as nvidia-smi lists them (index, name, compute capability), or None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    for fields in ("index,name,compute_cap", "index,name"):   # old drivers do not know compute_cap
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0:
            keys = fields.split(",")
            return [dict(zip(keys, (p.strip() for p in line.split(",")))) for line in out.stdout.splitlines()
                    if line.strip()]
    return []


def _describe_gpu(gpu: dict) -> str:
    cc = f", compute capability {gpu['compute_cap']}" if gpu.get("compute_cap") else ""
    return f"{gpu.get('index', '?')}: {gpu.get('name', '?')}{cc}"


def gpu_context(i: int):
    """MXNet's context for GPU ``i`` (tests put a CPU context here)."""
    from mxlab.devices import import_mxnet

    return import_mxnet().gpu(i)


def small_pass(ctx):
    """A convolution (cuDNN on a GPU) and a dense layer (cuBLAS), forward and backward, on ``ctx``."""
    import numpy as np

    from mxlab.devices import import_mxnet

    mx = import_mxnet()
    rng = np.random.RandomState(0)
    X = mx.nd.array(rng.uniform(-1, 1, (2, 3, 8, 8)), ctx=ctx)
    K = mx.nd.array(rng.uniform(-1, 1, (4, 3, 3, 3)), ctx=ctx)
    W = mx.nd.array(rng.uniform(-1, 1, (5, 4 * 6 * 6)), ctx=ctx)
    for p in (K, W):
        p.attach_grad()
    with mx.autograd.record():
        h = mx.nd.Convolution(X, K, kernel=(3, 3), num_filter=4, no_bias=True).relu()
        out = mx.nd.FullyConnected(h, W, num_hidden=5, no_bias=True)
        loss = (out.tanh() ** 2).sum()
    loss.backward()
    return [out.asnumpy(), K.grad.asnumpy(), W.grad.asnumpy()]


def check_gpus():
    """One line for the GPUs seen, then one per GPU for its pass against the CPU's."""
    from mxlab import devices

    listed = nvidia_smi()
    names = f"; nvidia-smi: {'; '.join(map(_describe_gpu, listed))}" if listed else ""
    build = devices.installed_build()
    if not devices.gpu_build_installed():
        if listed:
            return [("gpus", WARN, f"{len(listed)} GPU(s) present but the CPU build ({build}) is installed: "
                                   f"`make setup GPU=cu112` to train on them{names}")]
        return [("gpus", OK, f"none used: CPU build ({build}); `make setup GPU=cu112` for CUDA 11 GPUs")]
    count = devices.num_gpus()
    if count == 0:
        status = FAIL if listed else WARN   # nvidia-smi sees GPUs that MXNet does not: the driver is at fault
        return [("gpus", status, f"no device: {build} sees 0 GPUs; training runs on the CPU{names}")]
    lines = [("gpus", OK, f"{count} seen by {build}{names or ' (no nvidia-smi for names)'}")]
    import numpy as np

    reference = small_pass(devices.import_mxnet().cpu())
    for i in range(count):
        try:
            got = small_pass(gpu_context(i))
        except Exception as exc:   # noqa: BLE001  (a broken GPU is a FAIL line, not a traceback)
            lines.append((f"gpu:{i}", FAIL, f"forward/backward failed: {_one_line(exc)}"))
            continue
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(got, reference))
        ok = all(np.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(got, reference))
        lines.append((f"gpu:{i}", OK if ok else FAIL,
                      f"forward and backward {'match' if ok else 'DIFFER from'} the CPU's (max difference {diff:.1e})"))
    return lines


def check_cuda_libraries():
    import ctypes

    from mxlab import devices

    if not devices.gpu_build_installed():
        return OK, "not needed by the CPU build"
    found = devices.find_cuda_libraries()
    missing = [s for s in devices.CUDA_LIBRARIES if s not in found]
    if missing:
        return FAIL, f"missing from the nvidia wheels: {', '.join(missing)}; run `make setup GPU=cu112`"
    folders = sorted({str(p.parents[3]) for p in found.values()})   # site-packages/nvidia/<part>/lib/<so>
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return FAIL, (f"{len(found)} CUDA 11 libraries in {', '.join(folders)}, but no driver (libcuda.so.1): "
                      f"install the NVIDIA driver")
    version = ctypes.c_int(0)
    rc = driver.cuDriverGetVersion(ctypes.byref(version))
    said = (f"driver CUDA {version.value // 1000}.{version.value % 1000 // 10}" if rc == 0
            else f"driver answers error {rc}{' (no device)' if rc == CUDA_ERROR_NO_DEVICE else ''}")
    return OK, f"all {len(found)} CUDA 11 libraries in {', '.join(folders)}; {said}"


# ---------------------------------------------------------------- data

def check_fashion_mnist():
    from mxlab.data import fashion_mnist
    from mxlab.data.core import DataError
    from mxlab.data.download import read_verified

    folders = set()
    for name in fashion_mnist.FILES:
        try:
            path = fashion_mnist.locate(name, download=False)
        except DataError:
            return WARN, (f"{name}.gz not found locally: mxlab downloads it on first use (or `make data` "
                          f"installs the Debian package dataset-fashion-mnist)")
        try:
            read_verified(path, fashion_mnist.check(name), fashion_mnist.how_to_provide(name))
        except DataError as exc:
            return FAIL, _one_line(exc)
        folders.add(str(path.parent))
    return OK, f"4 files, decompressed SHA-256 verified, in {', '.join(sorted(folders))}"


def check_tang300():
    import hashlib

    from mxlab.data import text

    path = text.tang300_path()
    if not path.is_file():
        return WARN, f"{path} missing: the RNN experiments need the Debian package fortunes-zh (`make data`)"
    return OK, f"{path}, SHA-256 {hashlib.sha256(path.read_bytes()).hexdigest()}"


# ---------------------------------------------------------------- stores, stale runs, disk

def _workspace():
    from mxlab import workspace

    return workspace


def check_store(url: str, table: str):
    """Whether a store answers: a sqlite file read-only (never created here), a server, or a database."""
    shown = hide_password(url)
    try:
        return _ask_store(url, shown, table)
    except Exception as exc:   # noqa: BLE001  (the store is named; its password is not)
        password = re.search(r"://[^:/@]*:([^@/]*)@", url)
        text = _one_line(exc).replace(password.group(1), "***") if password and password.group(1) else _one_line(exc)
        hint = ""
        if isinstance(exc, ImportError) and re.match(r"^postgresql://", url):
            hint = " (SQLAlchemy 2 reads postgresql:// as psycopg 3; mxlab installs psycopg2: postgresql+psycopg2://)"
        return FAIL, f"{shown}: {hide_password(text)}{hint}"


def _ask_store(url: str, shown: str, table: str):
    if url.startswith("sqlite:///"):
        path = _workspace().sqlite_path(url)
        if not path.exists():
            return OK, f"{shown} (not created yet: the first run creates it)"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            count = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return OK, f"{shown} ({count} {table})"
    if url.startswith(("http://", "https://")):
        import urllib.request

        bare = re.sub(r"://[^/@]*@", "://", url.rstrip("/"))   # MLflow takes credentials from its env, not the URL
        with urllib.request.urlopen(bare + "/health", timeout=10) as reply:
            return OK, f"{shown} (server answers {reply.status})"
    if re.match(r"^(postgresql|mysql|mssql)(\+\w+)?://", url):
        import sqlalchemy

        args = {"connect_timeout": 10} if url.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
        return OK, f"{shown} (database answers)"
    return WARN, f"{shown}: not checked (mxlab checks sqlite, http(s) and PostgreSQL/MySQL stores)"


def check_workspace():
    ws = _workspace()
    try:
        root = ws.root()
    except ws.WorkspaceError as exc:
        return WARN, f"{exc} (the default stores live in the workspace)"
    return OK, f"{root} ({len(ws.experiment_names(root))} experiments)"


def _store_url(env: str, default) -> str | None:
    """The store a variable names, else the workspace's default; None outside a workspace."""
    ws = _workspace()
    try:
        return os.environ.get(env) or default()
    except ws.WorkspaceError:
        return None


def check_mlflow():
    url = _store_url("MLFLOW_TRACKING_URI", _workspace().mlflow_uri)
    return check_store(url, "experiments") if url else (WARN, "not checked: no workspace, no MLFLOW_TRACKING_URI")


def check_optuna():
    url = _store_url("MXLAB_OPTUNA_STORAGE", _workspace().optuna_url)
    return check_store(url, "studies") if url else (WARN, "not checked: no workspace, no MXLAB_OPTUNA_STORAGE")


def check_stale_runs():
    uri = _store_url("MLFLOW_TRACKING_URI", _workspace().mlflow_uri)
    if uri is None or uri.startswith("sqlite:///") and not _workspace().sqlite_path(uri).exists():
        return OK, "none (no MLflow store yet)"
    from mlflow.tracking import MlflowClient

    from mxlab.tracking import owner_alive, running_here

    host = socket.gethostname()
    runs = running_here(MlflowClient(uri))   # listed, not closed: the store's own sweep closes them
    stale, unknown = [], 0
    for run in runs:
        pid = run.data.tags.get("mxlab.pid", "")
        if not pid.isdigit():
            unknown += 1
        elif owner_alive(run.data.tags) is False:   # pid and process start time: a reused pid is no owner
            stale.append(f"{run.info.run_id} (pid {pid})")
    extra = f"; {unknown} RUNNING without a recorded pid" if unknown else ""
    if stale:
        return WARN, (f"{len(stale)} run(s) RUNNING on {host} whose process is gone: {', '.join(stale)}; the next "
                      f"mxlab run or tune closes them KILLED{extra}")
    return OK, f"none on {host} ({len(runs)} RUNNING with a live process{extra})"


def check_disk():
    try:
        where = _workspace().root()
    except Exception:   # noqa: BLE001  (outside a workspace: the current folder's disk)
        where = Path.cwd()
    free = shutil.disk_usage(where).free
    text = f"{free / (1 << 30):.1f} GiB free at {where}"
    if free < FREE_DISK_FAIL:
        return FAIL, f"{text}: under 1 GiB, runs will fail writing checkpoints and artifacts"
    return (WARN, f"{text}: under 5 GiB") if free < FREE_DISK_WARN else (OK, text)


# ---------------------------------------------------------------- running the list

def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


# (name, check, the check it needs): a check returns (status, detail) or a list of (name, status, detail).
CHECKS = (
    ("python", check_python, None), ("numpy", check_numpy, None), ("compat", check_compat, None),
    ("mxnet", check_mxnet, None), ("oneDNN", check_onednn, "mxnet"), ("gpus", check_gpus, "mxnet"),
    ("cuda", check_cuda_libraries, None), ("fashion-mnist", check_fashion_mnist, None),
    ("tang300", check_tang300, None), ("workspace", check_workspace, None), ("mlflow", check_mlflow, None), ("optuna", check_optuna, None),
    ("stale runs", check_stale_runs, "mlflow"), ("disk", check_disk, None),
)


def run_checks() -> list[dict]:
    results, failed = [], set()
    for name, check, needs in CHECKS:
        if needs in failed:   # its FAIL line is there already; asking again would only wait for timeouts
            results.append({"check": name, "status": WARN, "detail": f"not checked: {needs} failed"})
            continue
        try:
            out = check()
        except Exception as exc:   # noqa: BLE001  (every failure is one line, the doctor goes on)
            out = (FAIL, _one_line(exc))
        for line in out if isinstance(out, list) else [(name, *out)]:
            results.append(dict(zip(("check", "status", "detail"), line)))
            if line[1] == FAIL:
                failed.add(name)
    return results


def main(as_json: bool = False) -> int:
    """Print the checklist (or one JSON object); 1 when a check FAILs, else 0 (warnings do not fail)."""
    results = run_checks()
    code = 1 if any(r["status"] == FAIL for r in results) else 0
    if as_json:
        print(json.dumps({"ok": code == 0, "checks": results}, indent=2))
    else:
        width = max(len(r["check"]) for r in results)
        for r in results:
            print(f"{r['status']:<4}  {r['check']:<{width}}  {r['detail']}")
        print("mxlab doctor: " + ("something is wrong (FAIL above)" if code else "ok"))
    return code


if __name__ == "__main__":
    sys.exit(main(as_json="--json" in sys.argv[1:]))
