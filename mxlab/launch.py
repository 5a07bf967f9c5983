"""``mxlab launch``: one training job across processes or machines, on MXNet's parameter server (ps-lite).

A job is a scheduler, servers and workers, each this module run as ``python -m mxlab.launch JOB`` with its role
in ``DMLC_ROLE``. The scheduler and servers are a bare ``import mxnet`` (MXNet runs their loop inside the
import); each worker joins the ``dist_*`` kvstore, trains its shard of the training split, and rank 0 records
the job's one MLflow run. Locally every process binds 127.0.0.1 (``DMLC_PS_ROOT_URI`` for the scheduler,
``DMLC_NODE_HOST`` for the others: ps-lite binds the address it is given); with ``--hosts`` servers and workers
are started over ssh, round robin, servers first, as MXNet's own launcher does.

No process outlives the job: each one watches its stdin, a pipe from the launcher (through ssh for a remote
one), and stops when it closes, whether the launcher ended the job or died. A process that fails fails the
job: the others are stopped (SIGTERM, then SIGKILL after :data:`GRACE` seconds) and the run is closed FAILED;
Ctrl-C or SIGTERM on the launcher closes it KILLED.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

GRACE = 5.0          # seconds a stopped process has to close what it holds before SIGKILL
ENDING = 60.0        # seconds the workers have to exit once the scheduler or a server has ended
JOINING = 300.0      # seconds every worker has to join the job (ps-lite itself would wait forever)
RESULT = "MXLAB_RESULT "   # a worker's last stdout line: its result as JSON
RANK = "MXLAB_RANK "       # a worker's first stdout line: its rank, once it joined the job
KVSTORES = ("dist_sync", "dist_sync_device", "dist_async")


class JobFailed(RuntimeError):
    """The job did not finish: ``status`` is FAILED or KILLED, ``run_id`` its MLflow run (None if not yet made)."""

    def __init__(self, message: str, status: str, run_id: str | None, code: int):
        super().__init__(message)
        self.status, self.run_id, self.code = status, run_id, code


@dataclass
class Role:
    """One started process of the job."""

    role: str
    index: int
    host: str
    popen: subprocess.Popen
    remote: bool
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    rank: int | None = None
    result: dict | None = None
    reader: threading.Thread | None = None

    @property
    def name(self) -> str:
        return f"{self.role} {self.index}" if self.role != "scheduler" else "scheduler"


def read_hosts(path: str | Path) -> list[tuple[str, int]]:
    """A hosts file as MXNet's launcher reads it: one ``address`` or ``address:ssh_port`` a line; # comments."""
    hosts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        host, _, port = line.partition(":")
        if not host or (port and not port.isdigit()) or " " in line:
            raise ValueError(f"{path}: line {number}: got {line!r}; allowed: an address or address:ssh_port")
        hosts.append((host, int(port or 22)))
    if not hosts:
        raise ValueError(f"{path}: no host; allowed: one address (or address:ssh_port) a line")
    return hosts


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def local_address(toward: str) -> str:
    """This machine's address on the route to ``toward`` (no packet is sent): where remote nodes reach the
    scheduler."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((toward, 9))
        return s.getsockname()[0]


def spec_digest(spec) -> str:
    from mxlab.spec import dump_yaml

    return hashlib.sha256(dump_yaml(spec).encode()).hexdigest()


def resolve(name: str, overrides, preset: str | None):
    """The job's spec and the overrides every worker applies: ``train.kvstore=dist_sync`` unless told otherwise."""
    from mxlab.spec import load_spec

    overrides = list(overrides)
    spec = load_spec(name, overrides, preset=preset)
    if spec.train.kvstore not in KVSTORES:
        if any(o.partition("=")[0].strip() == "train.kvstore" for o in overrides):
            raise ValueError(f"train.kvstore={spec.train.kvstore}: mxlab launch trains across processes; allowed: "
                             f"{', '.join(KVSTORES)}")
        overrides.append("train.kvstore=dist_sync")
        spec = load_spec(name, overrides, preset=preset)
    return spec, overrides


def launch(name: str, overrides=(), *, workers: int, servers: int | None = None, hosts_file: str | None = None,
           scheduler_host: str | None = None, preset: str | None = None, progress: bool = True,
           echo=None) -> dict:
    """Run one job to its end; returns rank 0's result (run id, status, metrics) and the job's facts.

    Raises :class:`JobFailed` when a process fails or the launcher is stopped, after every process has ended.
    """
    from mxlab import naming, tracking, workspace
    from mxlab.interrupts import exit_code, signal_name, stops_as_exceptions, stops_deferred

    echo = echo or sys.stderr
    hosts = read_hosts(hosts_file) if hosts_file else None
    servers = servers or (len(hosts) if hosts else 1)
    if workers < 1 or servers < 1:
        raise ValueError(f"-n {workers} -s {servers}: allowed: at least one worker and one server")
    spec, overrides = resolve(name, overrides, preset)
    c = tracking.client()   # the store's schema exists before any worker opens it
    experiment = tracking.experiment_id(c, spec.name)
    launch_id = uuid.uuid4().hex
    where = scheduler_host or (local_address(hosts[0][0]) if hosts else "127.0.0.1")
    port = free_port(where if not hosts else "")
    tags = {"mxlab.launch_id": launch_id, "mxlab.workers": str(workers), "mxlab.servers": str(servers),
            "mxlab.hosts": ",".join(h for h, _ in hosts) if hosts else "127.0.0.1",
            "mlflow.note.content": naming.command_line()}   # the notes say `mxlab launch`, not a worker's command
    job = {"name": name, "overrides": overrides, "preset": preset, "digest": spec_digest(spec), "tags": tags,
           "progress": progress}
    env = {"DMLC_PS_ROOT_URI": where, "DMLC_PS_ROOT_PORT": str(port), "DMLC_NUM_SERVER": str(servers),
           "DMLC_NUM_WORKER": str(workers), "MXLAB_ROOT": str(workspace.root())}
    job_procs: list[Role] = []
    status, message, code = "FINISHED", "", 0
    try:
        with stops_as_exceptions():
            job_procs.append(_start("scheduler", 0, None, env, job, echo, workers))
            slots = [("server", i) for i in range(servers)] + [("worker", i) for i in range(workers)]
            for n, (role, index) in enumerate(slots):
                host = hosts[n % len(hosts)] if hosts else None
                job_procs.append(_start(role, index, host, env, job, echo, workers))
            message = _watch(job_procs, f"{where}:{port}")
            if message:
                status, code = "FAILED", 1
    except KeyboardInterrupt as exc:
        status, message, code = "KILLED", f"stopped by {signal_name(exc)}", exit_code(exc)
    except Exception as exc:   # the launcher's own failure (no ssh, a bug): the job ends all the same
        status, message, code = "FAILED", f"mxlab launch: {type(exc).__name__}: {exc}", 1
    finally:
        with stops_deferred():   # a second Ctrl-C must not leave processes or an open run behind
            _stop(job_procs)
            run = _close_run(c, experiment, launch_id, status, message, job_procs)
    run_id = run.info.run_id if run else None
    if status != "FINISHED":
        raise JobFailed(f"{message} (run {run_id or 'not yet created'} {status})", status, run_id, code)
    head = next(p.result for p in job_procs if p.role == "worker" and p.result["rank"] == 0)
    return {**head, "workers": workers, "servers": servers, "hosts": tags["mxlab.hosts"], "scheduler": f"{where}:{port}",
            "params_sha256": {p.rank: p.result.get("params_sha256") for p in job_procs if p.role == "worker"},
            "processes": [{"role": p.role, "index": p.index, "pid": p.popen.pid, "rank": p.rank} for p in job_procs]}


def _start(role: str, index: int, host, env: dict, job: dict, echo, workers: int) -> Role:
    """One process of the job, in a session of its own (the terminal's Ctrl-C reaches the launcher only)."""
    node = host[0] if host else "127.0.0.1"
    role_env = {**env, "DMLC_ROLE": role, "DMLC_NODE_HOST": node}
    if role == "scheduler":
        role_env["DMLC_NODE_HOST"] = env["DMLC_PS_ROOT_URI"]
    command = [sys.executable, "-m", "mxlab.launch", json.dumps(job)]
    if host:   # the same Python and workspace paths on every host (a shared or identical installation)
        forwarded = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS", "MXLAB_CACHE_DIR")
                     if k in os.environ}
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**forwarded, **role_env}.items())
        remote = f"cd {shlex.quote(env['MXLAB_ROOT'])} && exec env {exports} {shlex.join(command)}"
        command = ["ssh", "-o", "BatchMode=yes", "-p", str(host[1]), host[0], remote]
        full_env = dict(os.environ)
    else:
        full_env = {**os.environ, **role_env}
        if role == "worker" and "OMP_NUM_THREADS" not in os.environ:   # workers share this machine's cores
            full_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    popen = subprocess.Popen(command, env=full_env, cwd=env["MXLAB_ROOT"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    proc = Role(role, index, node, popen, remote=bool(host))
    where = f"{node}:{env['DMLC_PS_ROOT_PORT']}" if role == "scheduler" else node
    print(f"mxlab launch: started {proc.name} (pid {popen.pid}) on {where}", file=echo, flush=True)
    proc.reader = threading.Thread(target=_relay, args=(proc, echo), daemon=True)
    proc.reader.start()
    return proc


def _relay(proc: Role, echo) -> None:
    """A process's output to the launcher's stderr, prefixed; its rank and result lines kept."""
    for raw in iter(proc.popen.stdout.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith(RESULT):
            proc.result = json.loads(line[len(RESULT):])
            continue
        if line.startswith(RANK):
            proc.rank = int(line[len(RANK):])
            line = f"joined the job as rank {proc.rank}"
        proc.tail.append(line)
        print(f"[{proc.name}] {line}", file=echo, flush=True)


def _watch(procs: list[Role], scheduler: str) -> str:
    """Wait for the job; returns why it failed, or "" when every worker finished and the others followed."""
    workers = [p for p in procs if p.role == "worker"]
    ending = None   # when the first process ended well: the rest follow within ENDING seconds
    joining = time.monotonic() + JOINING
    while True:
        late = [w.name for w in workers if w.rank is None and w.popen.poll() is None]
        if late and time.monotonic() > joining:
            return (f"{', '.join(late)} did not join the job within {JOINING:.0f} s: can it reach the scheduler at "
                    f"{scheduler}?")
        for p in procs:
            code = p.popen.poll()
            if code is not None and code != 0:
                last = next((line for line in reversed(p.tail) if line.strip()), "")
                return f"{p.name} (pid {p.popen.pid}) {_exit_text(code)}" + (f": {last}" if last else "")
        if all(p.popen.poll() is not None for p in procs):
            for w in workers:   # its last lines may still be in the pipe
                w.reader.join(timeout=10)
            missing = [w.name for w in workers if w.result is None]
            return f"{', '.join(missing)} ended without a result" if missing else ""
        # ps-lite's last barrier ends the scheduler and servers while workers may still be exiting, and a worker
        # may be logging its artifacts while the others are done: but a job whose other half is gone never ends.
        if any(p.popen.poll() is not None for p in procs if p.role != "worker"):
            ending = ending or time.monotonic()
            if time.monotonic() - ending > ENDING:
                left = ", ".join(p.name for p in procs if p.popen.poll() is None)
                return f"{left} still running {ENDING:.0f} s after the scheduler or a server ended"
        time.sleep(0.2)


def _exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _stop(procs: list[Role]) -> None:
    """End every process: close its stdin (it stops itself), then SIGKILL whatever is left after the grace."""
    for p in procs:
        with contextlib.suppress(OSError):
            p.popen.stdin.close()
    deadline = time.monotonic() + GRACE + 2
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.popen.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(p.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=10)


def _close_run(c, experiment: str, launch_id: str, status: str, message: str, procs: list[Role]):
    """The job's run, closed with the job's status (rank 0 may have died before it could); None if never made."""
    runs = c.search_runs([experiment], filter_string=f"tags.`mxlab.launch_id` = '{launch_id}'", max_results=2)
    if not runs:
        return None
    run_id = runs[0].info.run_id
    sums = {p.result.get("params_sha256") for p in procs if p.role == "worker" and p.result}
    if status == "FINISHED":
        c.set_tag(run_id, "mxlab.workers_identical", str(len(sums) == 1).lower())
        return c.get_run(run_id)
    c.set_tag(run_id, "mxlab.error" if status == "FAILED" else "mxlab.stopped_by", message[:5000])
    c.set_terminated(run_id, status)
    return c.get_run(run_id)


# ---------------------------------------------------------------- inside each process of the job

def _watch_stdin() -> None:
    """Stop when the launcher's pipe closes: SIGTERM first (a worker closes its run), then exit regardless."""
    def watch():
        with contextlib.suppress(OSError):
            while os.read(0, 1 << 12):   # unbuffered: no lock left held at interpreter exit
                pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(GRACE)
        os._exit(143)

    threading.Thread(target=watch, daemon=True).start()


def params_digest(net) -> str:
    """SHA-256 over the network's parameters by name: equal on every worker of a synchronous job."""
    digest = hashlib.sha256()
    for name, param in sorted(net.collect_params().items()):
        digest.update(name.encode())
        digest.update(param.data().asnumpy().tobytes())
    return digest.hexdigest()


def _worker(job: dict) -> int:
    from mxlab.runner import job_rank, run
    from mxlab.spec import load_spec

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spec = load_spec(job["name"], job["overrides"], preset=job["preset"])
    if spec_digest(spec) != job["digest"]:
        raise ValueError(f"the spec resolved on {socket.gethostname()} differs from the launcher's; allowed: the same "
                         f"experiments/{job['name']} (and mxlab) on every host")
    rank, _ = job_rank(spec)   # joins the job: returns once every node has registered with the scheduler
    print(f"{RANK}{rank}", flush=True)
    with contextlib.redirect_stdout(sys.stderr):
        result = run(spec, tags=job["tags"], progress=job["progress"] and rank == 0)
    print(RESULT + json.dumps({"run_id": result.run_id, "experiment": result.experiment, "status": result.status,
                               "metrics": result.metrics, "rank": rank,
                               "params_sha256": params_digest(result.net)}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    _watch_stdin()
    role = os.environ.get("DMLC_ROLE")
    if role in ("scheduler", "server"):
        from mxlab.devices import import_mxnet

        import_mxnet()   # MXNet runs the role's loop inside the import, and exits when the job ends
        return 0
    if role != "worker" or len(argv) != 1:
        print("mxlab.launch: started by `mxlab launch` only (DMLC_ROLE and a job)", file=sys.stderr)
        return 2
    try:
        return _worker(json.loads(argv[0]))
    except KeyboardInterrupt as exc:
        print(f"mxlab: stopped ({exc})", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MXLAB_DEBUG") == "1":
            raise
        print(f"mxlab: error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
