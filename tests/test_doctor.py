"""`mxlab doctor`: the real command in a subprocess, and every branch of its checks with fakes (a fake
`nvidia-smi` on PATH, a patched GPU count, GPU contexts standing in as CPU contexts, a stand-in driver object)."""
from __future__ import annotations

import ctypes
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from mxlab import compat, devices, doctor
from mxlab.doctor import FAIL, OK, WARN
from tests.conftest import REPO


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    mxlab = os.path.join(os.path.dirname(sys.executable), "mxlab")
    return subprocess.run([mxlab, "doctor", *args], capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, **(env or {})})


def lines_of(result) -> dict[str, tuple[str, str]]:
    return {r["check"]: (r["status"], r["detail"]) for r in result}


@pytest.mark.slow   # subprocesses that import mxnet or create a store: `make test`, not test-fast
def test_command_on_this_installation(workspace):
    out = run_doctor()
    assert out.returncode == 0, out.stdout + out.stderr
    status = {line.split()[1]: line.split()[0] for line in out.stdout.splitlines()[:-1]}
    named = ("python", "numpy", "compat", "mxnet", "workspace", "mlflow", "optuna")
    assert {k: status[k] for k in named} == dict.fromkeys(named, OK)
    assert f"ok    workspace      {workspace} (" in out.stdout
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in out.stdout and "1.9.1, CPU build (mxnet)" in out.stdout
    assert out.stdout.rstrip().endswith("mxlab doctor: ok")

    report = json.loads(run_doctor("--json").stdout)
    assert report["ok"] is True
    names = [c["check"] for c in report["checks"]]
    assert names[:4] == ["python", "numpy", "compat", "mxnet"] and "stale runs" in names and "disk" in names


@pytest.mark.slow   # subprocesses that import mxnet or create a store: `make test`, not test-fast
def test_command_fails_on_unreachable_stores_and_hides_the_password(workspace):
    port = closed_port()
    out = run_doctor("--json", env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                                    "MXLAB_OPTUNA_STORAGE": f"postgresql+psycopg2://mx:s3cret@127.0.0.1:{port}/optuna"})
    assert out.returncode == 1
    checks = lines_of(json.loads(out.stdout)["checks"])
    assert checks["mlflow"][0] == FAIL and checks["optuna"][0] == FAIL
    assert checks["stale runs"] == (WARN, "not checked: mlflow failed")
    assert "s3cret" not in out.stdout + out.stderr and f"mx:***@127.0.0.1:{port}/optuna: " in out.stdout
    assert checks["mlflow"][1].startswith(f"http://127.0.0.1:{port}: ") and "refused" in checks["mlflow"][1]
    assert all("\n" not in detail for _, detail in checks.values())


# ---------------------------------------------------------------- GPUs, with fakes

@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    """An `nvidia-smi` on PATH that lists two GPUs (or fails its compute_cap query, like an old driver)."""
    def install(old_driver: bool = False):
        script = tmp_path / "nvidia-smi"
        script.write_text("#!/bin/sh\n"
                          + ('case "$1" in *compute_cap*) echo "Field compute_cap is not valid" >&2; exit 2;; esac\n'
                             if old_driver else "")
                          + 'case "$1" in *compute_cap*) printf "0, Tesla T4, 7.5\\n1, NVIDIA A100-SXM4-40GB, 8.0\\n";;'
                            ' *) printf "0, Tesla T4\\n1, NVIDIA A100-SXM4-40GB\\n";; esac\n')
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return install


@pytest.fixture
def gpu_build(monkeypatch):
    """The GPU build as far as the doctor can tell, with `gpus` GPUs whose contexts are CPU contexts."""
    mx = devices.import_mxnet()

    def install(gpus: int):
        monkeypatch.setattr(devices, "installed_build", lambda: "mxnet-cu112")
        monkeypatch.setattr(devices, "num_gpus", lambda: gpus)
        monkeypatch.setattr(doctor, "gpu_context", lambda i: mx.cpu(i + 1))
    return install


def test_nvidia_smi_names_and_compute_capability(fake_smi, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert doctor.nvidia_smi() is None
    fake_smi()
    assert doctor.nvidia_smi() == [{"index": "0", "name": "Tesla T4", "compute_cap": "7.5"},
                                   {"index": "1", "name": "NVIDIA A100-SXM4-40GB", "compute_cap": "8.0"}]
    fake_smi(old_driver=True)
    assert doctor.nvidia_smi() == [{"index": "0", "name": "Tesla T4"}, {"index": "1", "name": "NVIDIA A100-SXM4-40GB"}]


def test_cpu_build_with_gpus_present_says_to_install_the_gpu_build(fake_smi, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    [(name, status, detail)] = doctor.check_gpus()
    assert (name, status) == ("gpus", OK) and "CPU build" in detail
    fake_smi()
    [(name, status, detail)] = doctor.check_gpus()
    assert status == WARN and "2 GPU(s) present" in detail and "make setup GPU=cu112" in detail


def test_each_gpu_runs_a_pass_compared_with_the_cpu(gpu_build, fake_smi):
    gpu_build(2)
    fake_smi()
    lines = doctor.check_gpus()
    assert [(n, s) for n, s, _ in lines] == [("gpus", OK), ("gpu:0", OK), ("gpu:1", OK)]
    assert "2 seen by mxnet-cu112" in lines[0][2] and "Tesla T4, compute capability 7.5" in lines[0][2]
    assert "match the CPU's" in lines[1][2]


def test_a_gpu_that_computes_wrong_or_fails_is_a_fail(gpu_build, monkeypatch):
    gpu_build(2)
    monkeypatch.setenv("PATH", "/nonexistent")
    real_pass = doctor.small_pass
    mx = devices.import_mxnet()

    def faulty(ctx):
        if ctx == mx.cpu(1):
            return [a + 0.01 for a in real_pass(ctx)]
        if ctx == mx.cpu(2):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_pass(ctx)

    monkeypatch.setattr(doctor, "small_pass", faulty)
    lines = doctor.check_gpus()
    assert "no nvidia-smi" in lines[0][2]
    assert lines[1][:2] == ("gpu:0", FAIL) and "DIFFER" in lines[1][2]
    assert lines[2][:2] == ("gpu:1", FAIL) and "illegal memory access" in lines[2][2]


def test_gpu_build_with_no_device(gpu_build, fake_smi, monkeypatch):
    gpu_build(0)
    monkeypatch.setenv("PATH", "/nonexistent")
    [(_, status, detail)] = doctor.check_gpus()
    assert status == WARN and "no device: mxnet-cu112 sees 0 GPUs" in detail
    fake_smi()   # the driver lists GPUs that MXNet cannot use
    [(_, status, detail)] = doctor.check_gpus()
    assert status == FAIL and "Tesla T4" in detail


class FakeDriver:
    def __init__(self, rc: int, version: int = 0):
        self.rc, self.version = rc, version

    def cuDriverGetVersion(self, ref):
        ctypes.cast(ref, ctypes.POINTER(ctypes.c_int)).contents.value = self.version
        return self.rc


def test_cuda_libraries_and_driver(monkeypatch, tmp_path):
    assert doctor.check_cuda_libraries() == (OK, "not needed by the CPU build")
    monkeypatch.setattr(devices, "installed_build", lambda: "mxnet-cu112")
    libs = {s: tmp_path / "nvidia" / "part" / "lib" / s for s in devices.CUDA_LIBRARIES}
    monkeypatch.setattr(devices, "find_cuda_libraries", lambda: dict(list(libs.items())[:-1]))
    status, detail = doctor.check_cuda_libraries()
    assert status == FAIL and "libnccl.so.2" in detail

    monkeypatch.setattr(devices, "find_cuda_libraries", lambda: libs)
    drivers = iter([FakeDriver(100), FakeDriver(0, 11040)])
    monkeypatch.setattr(ctypes, "CDLL", lambda name: next(drivers))
    assert doctor.check_cuda_libraries() == (OK, f"all 10 CUDA 11 libraries in {tmp_path}; driver answers error "
                                                 f"100 (no device)")
    assert doctor.check_cuda_libraries()[1].endswith("driver CUDA 11.4")

    def no_driver(name):
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_driver)
    status, detail = doctor.check_cuda_libraries()
    assert status == FAIL and "no driver (libcuda.so.1)" in detail


# ---------------------------------------------------------------- the other checks' branches

def test_versions_and_build_branches(monkeypatch):
    assert doctor.expected_numpy((3, 11)) == "<1.24" and doctor.expected_numpy((3, 13)) == ">=2"
    assert doctor.numpy_fits("1.23.5", (3, 10)) and not doctor.numpy_fits("1.26.4", (3, 11))
    assert doctor.numpy_fits("1.26.4", (3, 12)) and doctor.numpy_fits("2.1.0", (3, 13))
    assert not doctor.numpy_fits("1.26.4", (3, 13))
    monkeypatch.setattr(doctor, "SUPPORTED_PYTHONS", ())
    assert doctor.check_python()[0] == WARN and "untested" in doctor.check_python()[1]
    monkeypatch.setattr(doctor, "numpy_fits", lambda *a: False)
    assert doctor.check_numpy()[0] == WARN
    monkeypatch.setattr(compat, "apply", lambda: [])
    assert doctor.check_compat() == (OK, "nothing to restore for MXNet 1.9.1 on this numpy and Python")
    monkeypatch.setattr(compat, "apply", lambda: ["int", "float_"])
    assert doctor.check_compat() == (OK, "restored 2 names MXNet 1.9.1 reads: int, float_")

    features = dict(devices.build_features(), **{"mxnet.onednn": "false", "mxnet.version": "1.8.0"})
    monkeypatch.setattr(devices, "build_features", lambda: features)
    assert doctor.check_onednn()[0] == WARN and "2 to 7 times slower" in doctor.check_onednn()[1]
    assert doctor.check_mxnet()[0] == WARN and "oneDNN off" in doctor.check_mxnet()[1]


def test_mxnet_that_does_not_import_fails_and_skips_what_needs_it(monkeypatch, workspace):
    def broken():
        raise devices.DeviceError("mxnet-cu112 is installed but no NVIDIA driver was found")

    monkeypatch.setattr(devices, "build_features", broken)
    monkeypatch.setattr(doctor, "check_stale_runs", lambda: (OK, "not looked at"))
    checks = lines_of(doctor.run_checks())
    assert checks["mxnet"] == (FAIL, "DeviceError: mxnet-cu112 is installed but no NVIDIA driver was found")
    assert checks["oneDNN"] == checks["gpus"] == (WARN, "not checked: mxnet failed")
    assert checks["python"][0] == OK
    assert doctor.main() == 1


def test_data_checks(monkeypatch, tmp_path):
    from mxlab.data import fashion_mnist

    monkeypatch.setenv("MXLAB_TANG300", str(tmp_path / "missing"))
    assert doctor.check_tang300()[0] == WARN
    monkeypatch.setattr(fashion_mnist, "search_dirs", lambda: [tmp_path])
    status, detail = doctor.check_fashion_mnist()
    assert status == WARN and "not found locally" in detail
    import gzip

    for name in fashion_mnist.FILES:
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"not an IDX file"))
    status, detail = doctor.check_fashion_mnist()
    assert status == FAIL and "\n" not in detail


def test_store_kinds(tmp_path, monkeypatch):
    import sqlite3

    db = tmp_path / "o.db"
    assert doctor.check_store(f"sqlite:///{db}", "studies") == (OK, f"sqlite:///{db} (not created yet: the first "
                                                                     f"run creates it)")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE studies (id INTEGER)")
        conn.execute("INSERT INTO studies VALUES (1)")
    assert doctor.check_store(f"sqlite:///{db}", "studies") == (OK, f"sqlite:///{db} (1 studies)")
    assert doctor.check_store("redis://h:6379", "studies")[0] == WARN
    status, detail = doctor.check_store(f"sqlite:///{tmp_path}", "studies")   # a folder, not a database
    assert status == FAIL and detail.startswith(f"sqlite:///{tmp_path}: ")
    status, detail = doctor.check_store("postgresql://u:pw@127.0.0.1:1/db", "studies")
    assert status == FAIL and "pw" not in detail.replace("psycopg", "")
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3 (not installed), 2.0 as psycopg2: the hint says which.
    assert ("postgresql+psycopg2://" in detail) == ("No module named 'psycopg'" in detail)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert doctor.check_store(f"http://u:pw@127.0.0.1:{server.server_port}", "experiments") == (
            OK, f"http://u:***@127.0.0.1:{server.server_port} (server answers 200)")
    finally:
        server.shutdown()
    assert doctor.hide_password("postgresql+psycopg2://a:b@c:5/d") == "postgresql+psycopg2://a:***@c:5/d"
    assert doctor.hide_password("sqlite:////x/y.db") == "sqlite:////x/y.db"


@pytest.mark.slow   # subprocesses that import mxnet or create a store: `make test`, not test-fast
def test_stale_runs_of_this_host(workspace, monkeypatch):
    from mlflow.tracking import MlflowClient

    assert doctor.check_stale_runs() == (OK, "none (no MLflow store yet)")
    (workspace / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlruns' / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.create_experiment("lenet", artifact_location=(workspace / "mlruns" / "artifacts").as_uri())
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    runs = {label: client.create_run(exp, tags={"host": h, **({"mxlab.pid": str(pid)} if pid else {})}).info.run_id
            for label, h, pid in (("dead", host, gone.pid), ("alive", host, os.getpid()), ("old", host, None),
                                  ("elsewhere", "another-host", gone.pid))}
    status, detail = doctor.check_stale_runs()
    assert status == WARN and f"{runs['dead']} (pid {gone.pid})" in detail and "1 run(s)" in detail
    assert runs["alive"] not in detail and runs["elsewhere"] not in detail and "1 RUNNING without a recorded pid" in detail
    client.set_terminated(runs["dead"], "KILLED")
    assert doctor.check_stale_runs()[0] == OK


def test_disk_thresholds(monkeypatch, workspace):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    for free, status in ((100 << 30, OK), (3 << 30, WARN), (100 << 20, FAIL)):
        monkeypatch.setattr(shutil, "disk_usage", lambda path, free=free: usage(0, 0, free))
        assert doctor.check_disk()[0] == status
    monkeypatch.delenv("MXLAB_ROOT")
    monkeypatch.chdir("/")
    assert "at /" in doctor.check_disk()[1]


def test_outside_a_workspace_the_default_stores_are_not_checked(monkeypatch):
    monkeypatch.delenv("MXLAB_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MXLAB_OPTUNA_STORAGE", raising=False)
    monkeypatch.chdir("/")
    assert doctor.check_workspace()[0] == WARN and "set MXLAB_ROOT" in doctor.check_workspace()[1]
    assert doctor.check_mlflow() == (WARN, "not checked: no workspace, no MLFLOW_TRACKING_URI")
    assert doctor.check_optuna() == (WARN, "not checked: no workspace, no MXLAB_OPTUNA_STORAGE")
    assert doctor.check_stale_runs() == (OK, "none (no MLflow store yet)")


def test_json_and_text_output(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "CHECKS", (("python", doctor.check_python, False),
                                           ("disk", lambda: (WARN, "low"), False)))
    assert doctor.main(as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "checks": [
        {"check": "python", "status": OK, "detail": doctor.check_python()[1]},
        {"check": "disk", "status": WARN, "detail": "low"}]}
    assert doctor.main() == 0
    assert capsys.readouterr().out.splitlines()[1] == "warn  disk    low"
