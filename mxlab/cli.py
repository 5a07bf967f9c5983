"""The ``mxlab`` command: argument parsing and printing only; the work happens in the library."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from mxlab import heap, workspace
from mxlab.console import format_metrics, number
from mxlab.tuning.storage import HEARTBEAT_SECONDS
from mxlab.tuning.study import PRUNERS, SAMPLERS, TuneOptions


# Commands whose work is training, where the runner ends the setting up. Not the servers (ui, dashboard) nor
# launch, which wait for hours and must collect all along.
HOLDS_THE_COLLECTOR = ("run", "tune")


def _fail(message: str, code: int = 2) -> int:
    print(f"mxlab: error: {message}", file=sys.stderr)
    return code


def cmd_list(args) -> int:
    """Reads the YAML files only, so it answers at once; ``mxlab check`` validates them."""
    from mxlab.spec import read_yaml

    rows = [("name", "model", "dataset", "presets", "description")]
    for name in workspace.experiment_names():
        try:
            raw = read_yaml(workspace.experiment_dir(name) / workspace.SPEC_FILE)
            model, data = raw.get("model") or {}, raw.get("data") or {}
            rows.append((name, str(model.get("name", "?")), str(data.get("name", "?")),
                         ",".join(workspace.presets(name)) or "-", str(raw.get("description", ""))))
        except Exception as exc:  # list every folder, even a broken one
            rows.append((name, "?", "?", "-", f"invalid: {exc}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
    return 0


def cmd_check(args) -> int:
    from mxlab.spec import load_spec
    from mxlab.train import build_net

    names = args.names or workspace.experiment_names()
    failed = 0
    for name in names:
        try:
            s = load_spec(name)
            for preset in workspace.presets(name):
                load_spec(name, preset=preset)
            build_net(s)   # the builder checks its own options (a VGG divisor, a DenseNet block list)
            print(f"ok     {name}")
        except Exception as exc:
            failed += 1
            print(f"error  {name}: {exc}")
    return 1 if failed else 0


def cmd_run(args) -> int:
    from mxlab.runner import resume, run
    from mxlab.spec import load_spec

    if args.resume:
        if args.best or args.preset:
            return _fail("--resume continues a run with the spec it recorded; drop --best and --preset")
        with contextlib.redirect_stdout(sys.stderr):
            result = resume(args.name, args.resume, args.overrides, progress=True)   # on stderr, even with --json
        return _print_result(args, result)
    tags = None
    if (args.study or args.storage) and not args.best:
        return _fail("--study and --storage choose the study for --best; add --best or drop them")
    if args.best and args.preset:
        return _fail("--best and --preset both choose hyperparameters; use one of them")
    if args.best:
        from mxlab.tuning import best_spec

        s, tags = best_spec(args.name, args.overrides, study=args.study, storage=args.storage)
        base = load_spec(args.name, args.overrides).flat()
        applied = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in sorted(s.flat().items()) if base.get(k) != v and not k.startswith("search."))
        print(f"--best: trial {tags['mxlab.trial']} of study {tags['mxlab.study']}: {applied or '(the spec itself)'}",
              file=sys.stderr)
    else:
        s = load_spec(args.name, args.overrides, preset=args.preset)
        if args.preset:
            tags = {"mxlab.preset": args.preset}
    # MLflow prints "View run" links on stdout for a tracking server: keep stdout for the result alone.
    with contextlib.redirect_stdout(sys.stderr):
        started = time.monotonic()
        result = run(s, tags=tags, run_name=args.run_name, progress=True)   # progress is on stderr, even with --json
        args.seconds = time.monotonic() - started
    return _print_result(args, result)


def _print_result(args, result) -> int:
    if args.json:
        print(json.dumps({"run_id": result.run_id, "experiment": result.experiment, "status": result.status,
                          "metrics": result.metrics}))
    else:
        if result.stop_reason:
            print(result.stop_reason, file=sys.stderr)
        from mxlab.console import summary

        print(summary(result, getattr(args, "seconds", None)))
    return 0


def cmd_launch(args) -> int:
    from mxlab.launch import JobFailed, launch

    if args.scheduler_host and not args.hosts:
        return _fail("--scheduler-host is for --hosts; on one machine the job stays on 127.0.0.1")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = launch(args.name, args.overrides, workers=args.workers, servers=args.servers,
                            hosts_file=args.hosts, scheduler_host=args.scheduler_host, preset=args.preset,
                            progress=not args.json)
    except JobFailed as exc:
        if args.json:
            print(json.dumps({"run_id": exc.run_id, "experiment": args.name, "status": exc.status,
                              "error": str(exc)}))
        return _fail(str(exc), exc.code)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"run {result['run_id']} {result['status']} ({result['workers']} workers, {result['servers']} "
              f"server(s) on {result['hosts']}): {format_metrics(result['metrics'])}")
    return 0


def cmd_ui(args) -> int:
    from mxlab import servers, workspace
    from mxlab.tracking import artifact_root, client, experiment_id, redact, tracking_uri

    uri = tracking_uri()
    root = artifact_root()
    if root is None:   # a tracking server is its own UI
        print(f"MLflow UI: {redact(uri)} (the tracking server in MLFLOW_TRACKING_URI serves it)")
        return 0
    url = f"http://127.0.0.1:{args.port}"

    def introduce():   # closes the runs left RUNNING by dead processes, and says where each experiment is
        c = client()
        print(f"MLflow UI on {url} (store {redact(uri)})")
        for e in c.search_experiments():
            if e.name != "Default":
                print(f"  {e.name}: {url}/#/experiments/{experiment_id(c, e.name)}/runs")

    if uri.startswith("sqlite:") and workspace.sqlite_path(uri).is_file():
        return servers.mlflow_ui(uri, args.port, root, while_starting=introduce)   # about a second sooner
    introduce()   # the client creates a new store's schema under its lock; the server must not race it
    return servers.mlflow_ui(uri, args.port, root)


def cmd_tune(args) -> int:
    from mxlab.tuning import tune

    options = TuneOptions(trials=args.trials, timeout=args.timeout, study=args.study, storage=args.storage,
                          sampler=args.sampler, pruner=args.pruner, workers=args.workers, seed=args.seed,
                          heartbeat=args.heartbeat, preset=args.preset)
    if args.save_preset:   # a bad name fails now, not after the study
        from mxlab.presets import check_name

        check_name(args.save_preset)
    # Libraries print to stdout too (MLflow's "View run" links for a tracking server): only the result goes there.
    with contextlib.redirect_stdout(sys.stderr):
        result = tune(args.name, args.overrides, options)
    if args.save_preset:
        from mxlab.presets import save_preset

        result["preset"] = str(save_preset(args.name, args.save_preset, study=args.study, storage=args.storage))
    if args.json:
        print(json.dumps(result))
    else:
        states = ", ".join(f"{k} {v}" for k, v in result["states"].items() if v)
        print(f"study {result['study']} ({result['storage']}): {result['n_trials']} trials ({states})")
        if result["best_trial"] is not None:
            params = "  ".join(f"{k}={number(v)}" for k, v in result["best_params"].items())
            print(f"best value {number(result['best_value'])} (trial {result['best_trial']}, MLflow run "
                  f"{result['best_run_id']}): {params}")
        print(f"MLflow parent run {result['parent_run_id']}")
        if args.save_preset:
            print(f"wrote {result['preset']}: mxlab run {args.name} --preset {args.save_preset}")
    return 0


def cmd_best(args) -> int:
    from mxlab.tuning import best

    info = best(args.name, study=args.study, storage=args.storage)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"study {info['study']} ({info['storage']}): best of {info['n_trials']} trials is trial {info['trial']}")
    print(f"  {info['metric']} = {number(info['value'])} ({info['direction']})")
    for key, value in info["params"].items():
        print(f"  {key} = {number(value)}")
    if info["mlflow_run_id"]:
        print(f"  MLflow run {info['mlflow_run_id']}")
    if info["tune_overrides"]:
        print(f"  tuned with: {' '.join(info['tune_overrides'])}")
    print(f"retrain: mxlab run {args.name} --best" + (f" --study {info['study']}" if args.study else ""))
    return 0


def cmd_dashboard(args) -> int:
    from mxlab.tuning import dashboard

    dashboard(args.storage, args.port)
    return 0


def cmd_doctor(args) -> int:
    from mxlab.doctor import main as doctor

    return doctor(as_json=args.json)


def cmd_reproduce(args) -> int:
    from mxlab.reproduce import reproduce

    path = reproduce(args.names or None, seeds=args.seeds, code=args.code, first_seed=args.first_seed,
                     preset=args.preset, render_only=args.render)
    print(f"wrote {path}" + (f" and {path.parent / 'tuning-results.md'}" if args.preset or args.render else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxlab", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from mxlab import __version__

    parser.add_argument("--version", action="version", version=f"mxlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="the experiments: name, model, dataset, description")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("check", help="validate experiment specs; exit 1 on any error")
    p.add_argument("names", nargs="*", help="experiments to check (default: all)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="train one experiment and record it in MLflow")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=1")
    p.add_argument("--json", action="store_true", help="print one JSON object with the run's result on stdout")
    p.add_argument("--best", action="store_true", help="train with the best params of the experiment's study")
    p.add_argument("--study", help="with --best: the study (default: named like the experiment)")
    p.add_argument("--storage", help="with --best: the study storage URL (default: MXLAB_OPTUNA_STORAGE, else "
                                     "sqlite mlruns/optuna.db)")
    p.add_argument("--preset", help="apply experiments/NAME/PRESET.yaml over the spec (e.g. tuned)")
    p.add_argument("--name", dest="run_name", metavar="RUN_NAME",
                   help="the MLflow run name (default: the experiment and what differs from its spec)")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an unfinished run (or 'last': the newest one) from "
                                                      "its last checkpoint, in the same MLflow run; only "
                                                      "train.epochs=N may be given, to extend it")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("launch", help="train one experiment across processes or machines (MXNet's parameter server)")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=1")
    p.add_argument("-n", "--workers", type=int, required=True, help="worker processes, each training its shard")
    p.add_argument("-s", "--servers", type=int, help="server processes (default: 1, or one per host with --hosts)")
    p.add_argument("--hosts", metavar="FILE", help="start servers and workers over ssh on these hosts (one address or "
                                                   "address:ssh_port a line); default: this machine, on 127.0.0.1")
    p.add_argument("--scheduler-host", help="with --hosts: this machine's address the hosts reach (default: the "
                                            "one on the route to the first host)")
    p.add_argument("--preset", help="apply experiments/NAME/PRESET.yaml over the spec (e.g. tuned)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the run's result on stdout")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("tune", help="an Optuna study over the experiment's search space; reruns resume it")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=1")
    p.add_argument("--trials", type=int, default=20, help="trials to add in this invocation (default 20)")
    p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    p.add_argument("--study", help="study name (default: the experiment's name)")
    p.add_argument("--storage", help="study storage URL (default: MXLAB_OPTUNA_STORAGE, else sqlite "
                                     "mlruns/optuna.db); postgresql://... for several workers")
    p.add_argument("--sampler", choices=list(SAMPLERS), default=TuneOptions.sampler)
    p.add_argument("--pruner", choices=list(PRUNERS), default=TuneOptions.pruner)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (needs PostgreSQL)")
    p.add_argument("--seed", type=int, help="sampler seed, for a reproducible search")
    p.add_argument("--preset", help="tune around experiments/NAME/PRESET.yaml instead of the spec alone")
    p.add_argument("--save-preset", metavar="PRESET", help="write the best trial's params to "
                                                            "experiments/NAME/PRESET.yaml, with the study in a header")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_SECONDS,
                   help="seconds between a trial's heartbeats; a trial silent for twice this is failed and retried")
    p.add_argument("--json", action="store_true", help="print one JSON object with the study's result on stdout")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("best", help="the best trial of the experiment's study")
    p.add_argument("name")
    p.add_argument("--study", help="study name (default: the experiment's name)")
    p.add_argument("--storage", help="study storage URL (default: MXLAB_OPTUNA_STORAGE, else sqlite mlruns/optuna.db)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("dashboard", help="optuna-dashboard on the study storage, on 127.0.0.1")
    p.add_argument("--storage", help="study storage URL (default: MXLAB_OPTUNA_STORAGE, else sqlite mlruns/optuna.db)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("reproduce", help="run experiments with the book's settings and write docs/results.md")
    p.add_argument("names", nargs="*", help="experiments (default: every one 2 CPU cores can do in about an hour)")
    p.add_argument("--seeds", type=int, default=1, help="train each with this many seeds and report the mean")
    p.add_argument("--first-seed", type=int, help="the first seed (default: the spec's train.seed)")
    p.add_argument("--code", choices=["mxlab", "book", "both"], default="mxlab",
                   help="train with mxlab, with the book's own d2lzh code (pip install -e '.[parity]'), or both")
    p.add_argument("--preset", help="train mxlab with experiments/NAME/PRESET.yaml and write docs/tuning-results.md")
    p.add_argument("--render", action="store_true", help="rewrite the docs from docs/results.json, training nothing")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("doctor", help="check this installation: Python, MXNet, GPUs, data, stores, disk")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("ui", help="the MLflow UI on the workspace store, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    from mxlab.commands import add_run_commands

    add_run_commands(sub)
    return parser


USAGE = """Train the book's models, track them in MLflow, tune them with Optuna.

  mxlab list                          the experiments
  mxlab run lenet train.epochs=2      train one (any spec key=value overrides it)
  mxlab runs lenet                    its runs; mxlab show RUN_ID for one of them
  mxlab compare lenet mlp --plot c.png   side by side, with the book's numbers
  mxlab predict RUN_ID --images 10    the model on test images
  mxlab tune lenet --trials 20        an Optuna study; mxlab best lenet, mxlab run lenet --best
  mxlab ui | mxlab dashboard          MLflow's UI, optuna-dashboard
  eval "$(mxlab env)"                 point MLflow's own CLI and API at this workspace
"""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mxlab.console import quiet_libraries

    quiet_libraries()
    parser = build_parser()
    # Overrides may follow options (mxlab tune lenet --trials 40 train.epochs=10): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:   # bare `mxlab`: the help, not an error
        parser.print_help()
        return 0
    from mxlab.interrupts import exit_code, signal_name

    # This process's own training command (not a caller's process: a test passes argv) holds the collector while
    # it imports and sets up, until training starts; see mxlab.heap.
    held = heap.held() if argv is None and args.command in HOLDS_THE_COLLECTOR else contextlib.nullcontext()
    try:
        with held:
            return args.func(args)
    except KeyboardInterrupt as exc:   # Ctrl-C, SIGTERM, SIGHUP: whatever ran is closed KILLED
        return _ended(args, exc, "KILLED", f"stopped by {signal_name(exc)}", exit_code(exc))
    except Exception as exc:
        if os.environ.get("MXLAB_DEBUG") == "1":
            raise
        return _ended(args, exc, "FAILED", one_line(exc), 2 if bad_input(exc) else 1)


def bad_input(exc: BaseException) -> bool:
    """Exit 2 for what the user typed or wrote (a spec, an option, an experiment name); 1 for the environment
    (data, devices, stores, disks, a damaged checkpoint) and anything unforeseen."""
    from mxlab.runner import CheckpointError

    return isinstance(exc, (ValueError, KeyError, TypeError)) and not isinstance(exc, (CheckpointError,
                                                                                         FloatingPointError))


# How a full disk (or a file-size limit) reads in the errors of the OS, sqlite and MLflow's store.
FULL_DISK = ("No space left on device", "File too large", "Disk quota exceeded", "database or disk is full",
             "disk I/O error", "Write incomplete")


def one_line(exc: BaseException) -> str:
    """The first line of the error, named by its kind where its type says more than its text."""
    text = str(exc).strip().strip("'\"")
    first = text.splitlines()[0] if text else type(exc).__name__
    if len(first) > 400:
        first = first[:400] + " ..."
    if any(sign in first for sign in FULL_DISK):
        first += "; the disk may be full: free space (or point MLFLOW_TRACKING_URI elsewhere), then resume"
    known = ("SpecError", "WorkspaceError", "DataError", "DeviceError", "StoreError", "CheckpointError",
             "NonFiniteLoss", "ValueError", "KeyError")
    name = type(exc).__name__
    return first if name in known else f"{name}: {first}"


def _ended(args, exc: BaseException, status: str, message: str, code: int) -> int:
    """One line on stderr (and the JSON object with --json), the command that continues where it helps."""
    run_id = getattr(exc, "mxlab_run_id", None)
    if getattr(args, "json", False) and args.command in ("run", "tune", "launch"):
        print(json.dumps({"run_id": run_id, "experiment": getattr(args, "name", None), "status": status,
                          "error": message}))
    _fail(message, code)
    if args.command == "run" and run_id and not isinstance(exc, (ValueError, KeyError)):
        print(f"continue it with: mxlab run {args.name} --resume {run_id}", file=sys.stderr)
    elif args.command == "tune" and status == "KILLED":
        print(f"continue the study with the same command: mxlab tune {args.name} ... (the interrupted trial is "
              f"retried from its checkpoint)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
