"""Worker processes of ``tune --workers K``: each is this module's :func:`worker`, started as a function.

Workers are spawned (a fresh interpreter each: MXNet's engine does not survive a fork) and get their options as
arguments, so the storage password never appears on a command line. Each runs its share of the trials.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from mxlab import heap
from mxlab.tuning.trials import log


def worker(name: str, overrides: Sequence[str], options, parent_run_id: str, index: int,
           root: Path | None = None) -> None:
    """One worker: the study exists already; run this worker's share (``options.trials``) of it."""
    import optuna

    from mxlab.tuning.space import tuning_spec
    from mxlab.tuning.storage import quiet_optuna
    from mxlab.tuning.study import make_pruner, make_sampler, open_study_storage, optimize, sampler_seed

    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # stdout stays the parent's, for --json alone
    spec, _ = tuning_spec(name, overrides, root, preset=options.preset)
    storage = open_study_storage(options.storage, spec.name, options, root)
    with quiet_optuna():
        study = optuna.load_study(study_name=options.study, storage=storage,
                                  pruner=make_pruner(options.pruner, spec.train.epochs))
    study.sampler = make_sampler(options.sampler, sampler_seed(options.seed, study, index))
    optimize(spec, study, trials=options.trials, timeout=options.timeout, parent_run_id=parent_run_id,
             root=root, progress=options.progress)


def _main(name, overrides, options, parent_run_id, index, root, threads):
    # Workers share the cores: one worker's OpenMP pool should not take them all (read when MXNet loads).
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        with heap.held():   # a process of its own that sets up, then trains (see mxlab.heap)
            worker(name, overrides, options, parent_run_id, index, root)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(name: str, overrides: Sequence[str], options, parent_id: str, root: Path | None) -> set[str]:
    """K worker processes sharing ``options.trials``; returns ``host:pid`` of those that died."""
    import dataclasses

    share = [options.trials // options.workers + (i < options.trials % options.workers)
             for i in range(options.workers)]
    threads = max(1, (os.cpu_count() or 1) // options.workers)
    spawn = multiprocessing.get_context("spawn")
    procs = []
    for i, n in enumerate(share):
        if n == 0:
            continue
        mine = dataclasses.replace(options, trials=n, workers=1)
        p = spawn.Process(target=_main, args=(name, list(overrides), mine, parent_id, i, root, threads),
                          name=f"mxlab-tune-worker-{i}")
        p.start()
        procs.append(p)
    log(f"started workers {', '.join(str(p.pid) for p in procs)}")
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        raise
    lost = {f"{socket.gethostname()}:{p.pid}" for p in procs if p.exitcode != 0}
    for p in procs:
        if p.exitcode != 0:
            code = p.exitcode
            log(f"worker {p.pid} ended with {'signal ' + str(-code) if code < 0 else 'exit code ' + str(code)}")
    if len(lost) == len(procs):
        raise RuntimeError(f"all {len(lost)} workers failed; see their messages above")
    return lost
