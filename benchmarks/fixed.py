"""Fixed costs of `make bench`: whole commands, timed from outside, each in a throwaway MLflow and Optuna store.

On a loaded machine wall time stretches with the load, so each figure also comes in units of a bare
``python -c "import mxnet"`` timed in the same round: that unit was 1.5 s on a quiet 2-core machine.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MXLAB = [sys.executable, "-m", "mxlab.cli"]


def timed(command: list[str], env: dict, timeout: float = 900, keep_stdout: bool = False) -> dict:
    """Wall and CPU seconds (the command and its children) of one command; its standard output if asked."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, **({"stdout": out.stdout} if keep_stdout else {})}


def store_env(tmp: str) -> dict:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db",
               MXLAB_OPTUNA_STORAGE=f"sqlite:///{tmp}/optuna.db")
    env.pop("MLFLOW_RUN_ID", None)
    return env


def run_and_list(tmp: str) -> dict:
    """``import mxnet`` (the unit), ``mxlab list``, and ``mxlab run linreg train.epochs=1`` on a store that
    exists already (its schema is made by a first, untimed run, as on any machine after the first run)."""
    env = store_env(tmp)
    subprocess.run([*MXLAB, "run", "linreg", "train.epochs=1"], env=env, cwd=ROOT, check=True, capture_output=True)
    return {"import_mxnet": timed([sys.executable, "-c", "import mxnet"], env),
            "list": timed([*MXLAB, "list"], env),
            "run_linreg": timed([*MXLAB, "run", "linreg", "train.epochs=1"], env)}


def study(tmp: str, trials: int) -> dict:
    """A study's cost per trial beyond training: one `mxlab tune linreg` of 1 + ``trials`` trials. From Optuna's
    records, the time from the first trial's end to the last one's, per trial: everything a trial costs in a
    running study (sampling, the run, its artifacts, the collection after it), free of the process's start, whose
    import times wander by a second here. Less the trials' own epoch seconds (``perf/epoch_seconds``: training
    and evaluation, about 0.1 s a linreg trial)."""
    import optuna
    from mlflow import MlflowClient

    env = store_env(tmp)
    command = timed([*MXLAB, "tune", "linreg", "--trials", str(trials + 1), "--study", "cost", "train.epochs=1",
                     "--seed", "0", "--pruner", "none"], env)
    done = sorted(optuna.load_study(study_name="cost", storage=env["MXLAB_OPTUNA_STORAGE"]).get_trials(),
                  key=lambda t: t.number)
    per_trial = (done[-1].datetime_complete - done[0].datetime_complete).total_seconds() / trials
    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    training = sum(m.value for t in done[1:]
                   for m in c.get_metric_history(t.user_attrs["mlflow.run_id"], "perf/epoch_seconds")) / trials
    return {"trials": trials, "command": command, "wall_seconds_per_trial": per_trial,
            "epoch_seconds_per_trial": training, "wall_seconds_per_trial_beyond_training": per_trial - training}


def pruning(tmp: str, trials: int, limit: int) -> dict:
    """What the median pruner saves: two ``trials``-trial `mxlab tune lenet` studies at the book's budget (the
    spec's 5 epochs, batch 256, 10% of the training split held out), the same sampler seed, with the median
    pruner and without; the time of the first over the second, and both best values (val/acc).
    ``limit`` caps the training images (0: the whole split)."""
    env = store_env(tmp)
    common = ["--trials", str(trials), "--seed", "0", "--json", *([f"data.limit={limit}"] if limit else [])]
    out = {"trials": trials, "limit": limit or None}
    for pruner in ("median", "none"):
        got = timed([*MXLAB, "tune", "lenet", "--study", f"lenet-{pruner}", "--pruner", pruner, *common], env,
                    timeout=4 * 3600, keep_stdout=True)
        study = json.loads(got.pop("stdout").strip().splitlines()[-1])
        out[pruner] = {**got, "best_value": study["best_value"], "states": study["states"]}
    out["time_pruned_over_unpruned"] = out["median"]["wall_seconds"] / out["none"]["wall_seconds"]
    out["best_value_difference"] = out["median"]["best_value"] - out["none"]["best_value"]
    return out


def _tree_rss_mb(pid: int) -> tuple[float, int]:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20, len(procs)


def ui(tmp: str, port: int = 5987, settle: float = 5.0) -> dict:
    """``mxlab ui``: seconds until its page answers, then its process tree's memory (after ``settle`` s)."""
    env = store_env(tmp)
    proc = subprocess.Popen([*MXLAB, "ui", "--port", str(port)], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start, answered = time.perf_counter(), None
    try:
        while time.perf_counter() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    if page.status == 200:
                        answered = time.perf_counter() - start
                        break
            except OSError:
                time.sleep(0.2)
        time.sleep(settle)
        rss, processes = _tree_rss_mb(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"seconds_to_answer": answered, "tree_rss_mb": rss, "processes": processes}


def measure(study_trials: int, with_ui: bool, pruning_trials: int = 0, pruning_limit: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="mxlab-bench-") as tmp:
        out = run_and_list(tmp)
        if study_trials:
            out["study"] = study(tmp, study_trials)
        if with_ui:
            out["ui"] = ui(tmp)
        if pruning_trials:
            out["pruning"] = pruning(tmp, pruning_trials, pruning_limit)
    unit = out["import_mxnet"]["wall_seconds"]
    for key in ("list", "run_linreg"):
        out[key]["in_import_mxnet_units"] = out[key]["wall_seconds"] / unit
    return out
