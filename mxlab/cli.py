"""The ``mxlab`` command: argument parsing and printing only; the work happens in the library."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys

from mxlab import workspace
from mxlab.tuning.storage import HEARTBEAT_SECONDS
from mxlab.tuning.study import PRUNERS, SAMPLERS


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
    from mxlab.runner import run
    from mxlab.spec import load_spec

    tags = None
    if (args.study or args.storage) and not args.best:
        return _fail("--study and --storage choose the study for --best; add --best or drop them")
    if args.best and args.preset:
        return _fail("--best and --preset both choose hyperparameters; use one of them")
    if args.best:
        from mxlab.tuning import best_spec

        s, tags = best_spec(args.name, args.overrides, study=args.study, storage=args.storage)
    else:
        s = load_spec(args.name, args.overrides, preset=args.preset)
        if args.preset:
            tags = {"mxlab.preset": args.preset}
    # MLflow prints "View run" links on stdout for a tracking server: keep stdout for the result alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(s, tags=tags, progress=not args.json)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "experiment": result.experiment, "status": result.status,
                          "metrics": result.metrics}))
    else:
        if result.stop_reason:
            print(result.stop_reason, file=sys.stderr)
        print(f"run {result.run_id} {result.status}: {json.dumps(result.metrics)}")
    return 0


def cmd_ui(args) -> int:
    from mxlab.tracking import client, experiment_id, tracking_uri

    uri = tracking_uri()
    c = client()
    url = f"http://127.0.0.1:{args.port}"
    names = [e.name for e in c.search_experiments()]
    print(f"MLflow UI on {url} (store {uri})")
    for name in names:
        if name != "Default":
            print(f"  {name}: {url}/#/experiments/{experiment_id(c, name)}/runs")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(args.port)]
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", workspace.mlflow_artifact_root().as_uri()]
    return subprocess.call(command)


def cmd_tune(args) -> int:
    from mxlab.tuning import TuneOptions, tune

    options = TuneOptions(trials=args.trials, timeout=args.timeout, study=args.study, storage=args.storage,
                          sampler=args.sampler, pruner=args.pruner, workers=args.workers, seed=args.seed,
                          heartbeat=args.heartbeat, preset=args.preset)
    # Libraries print to stdout too (MLflow's "View run" links for a tracking server): only the result goes there.
    with contextlib.redirect_stdout(sys.stderr):
        result = tune(args.name, args.overrides, options)
    if args.json:
        print(json.dumps(result))
    else:
        states = ", ".join(f"{k} {v}" for k, v in result["states"].items() if v)
        print(f"study {result['study']} ({result['storage']}): {result['n_trials']} trials ({states})")
        print(f"best value {result['best_value']} (trial {result['best_trial']}): {json.dumps(result['best_params'])}")
        print(f"MLflow parent run {result['parent_run_id']}")
    return 0


def cmd_best(args) -> int:
    from mxlab.tuning import best

    info = best(args.name, study=args.study, storage=args.storage)
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"study {info['study']} ({info['storage']}): best of {info['n_trials']} trials is trial {info['trial']}")
    print(f"  {info['metric']} = {info['value']} ({info['direction']})")
    for key, value in info["params"].items():
        print(f"  {key} = {value}")
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

    path = reproduce(args.names or None, seeds=args.seeds)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mxlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tune", help="an Optuna study over the experiment's search space; reruns resume it")
    p.add_argument("name")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="spec overrides, e.g. train.epochs=1")
    p.add_argument("--trials", type=int, default=20, help="trials to add in this invocation (default 20)")
    p.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    p.add_argument("--study", help="study name (default: the experiment's name)")
    p.add_argument("--storage", help="study storage URL (default: MXLAB_OPTUNA_STORAGE, else sqlite "
                                     "mlruns/optuna.db); postgresql://... for several workers")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="tpe")
    p.add_argument("--pruner", choices=list(PRUNERS), default="median")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (needs PostgreSQL)")
    p.add_argument("--seed", type=int, help="sampler seed, for a reproducible search")
    p.add_argument("--preset", help="tune around experiments/NAME/PRESET.yaml instead of the spec alone")
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
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("doctor", help="check this installation: Python, MXNet, GPUs, data, stores, disk")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("ui", help="the MLflow UI on the workspace store, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = build_parser()
    # Overrides may follow options (mxlab tune lenet --trials 40 train.epochs=10): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from mxlab.coerce import SpecError
    from mxlab.data.core import DataError
    from mxlab.devices import DeviceError
    from mxlab.interrupts import Terminated

    try:
        return args.func(args)
    except (SpecError, DataError, DeviceError, KeyError, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    except FloatingPointError as exc:   # a non-finite loss: the run is recorded FAILED, the cause is one line
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Terminated:
        return _fail("terminated (SIGTERM)", 143)


if __name__ == "__main__":
    sys.exit(main())
