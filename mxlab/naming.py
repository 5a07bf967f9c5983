"""Run names that say what a run is, and the command that made it (the run's notes). MLflow-free."""
from __future__ import annotations

import os
import shlex
import sys

from mxlab.workspace import redact

MAX_NAME = 120   # MLflow's runs table shows about this much


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace(" ", "")


def run_name(spec, preset: str | None = None) -> str:
    """The experiment and what differs from its ``experiment.yaml`` (``lenet train.lr=0.5 data.limit=600``)."""
    from mxlab.spec import load_spec

    parts = [spec.name] + ([f"@{preset}"] if preset else [])
    try:
        base = load_spec(spec.name).flat()
    except Exception:   # an experiment folder that is gone or changed: the name is only a label
        base = {}
    changed = [f"{key.split('.', 1)[-1] if key.startswith('model.') else key}={_short(value)}"
               for key, value in sorted(spec.flat().items())
               if key in base and base[key] != value and not key.startswith("search.space")]   # derived from lr
    name = " ".join(parts + changed)
    return name if len(name) <= MAX_NAME else name[:MAX_NAME - 1] + "…"


def _redact_arg(arg: str) -> str:
    """A store URL typed on the command line (``--storage URL``, ``--storage=URL``) keeps no password."""
    if "://" not in arg:
        return arg
    key, sep, value = arg.partition("=")
    return key + sep + redact(value) if sep and "://" in value and "://" not in key else redact(arg)


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a researcher would type it again."""
    argv = [_redact_arg(a) for a in (sys.argv if argv is None else argv)]
    program = os.path.basename(argv[0]) if argv else ""
    if program in ("mxlab", "cli.py", "__main__.py") or (argv and argv[0].endswith("mxlab/cli.py")):
        return shlex.join(["mxlab", *argv[1:]])
    return shlex.join(["python", *argv]) if argv and argv[0] else "python (interactive)"
