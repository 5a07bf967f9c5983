"""The ``mxlab`` command: argument parsing and printing only; the work happens in the library."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from mxlab import spec as specs


def _fail(message: str, code: int = 2) -> int:
    print(f"mxlab: error: {message}", file=sys.stderr)
    return code


def cmd_list(args) -> int:
    rows = [("name", "model", "dataset", "description")]
    for name in specs.experiment_names():
        try:
            s = specs.load_spec(name)
            rows.append((name, s.model.name, s.data.name, s.description))
        except Exception as exc:  # list every folder, even a broken one
            rows.append((name, "?", "?", f"invalid: {exc}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def cmd_check(args) -> int:
    from mxlab.train import build_net

    names = args.names or specs.experiment_names()
    failed = 0
    for name in names:
        try:
            s = specs.load_spec(name)
            build_net(s)   # the builder checks its own options (a VGG divisor, a DenseNet block list)
            print(f"ok     {name}")
        except Exception as exc:
            failed += 1
            print(f"error  {name}: {exc}")
    return 1 if failed else 0


def cmd_run(args) -> int:
    from mxlab.tracking import run_experiment

    s = specs.load_spec(args.name, args.overrides)
    result = run_experiment(s, progress=not args.json)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "experiment": result.experiment, "status": result.status,
                          "metrics": result.metrics}))
    else:
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
        command += ["--default-artifact-root", (specs.workspace_root() / "mlruns" / "artifacts").as_uri()]
    return subprocess.call(command)


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
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ui", help="the MLflow UI on the workspace store, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args = build_parser().parse_args(argv)
    from mxlab.data.core import DataError
    from mxlab.devices import DeviceError

    try:
        return args.func(args)
    except (specs.SpecError, DataError, DeviceError, KeyError, ValueError) as exc:
        return _fail(str(exc).strip("'\""))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
