"""The commands that read runs and the environment: env, runs, show, compare, predict, completion.
Parsing and printing only; :mod:`mxlab.runs` and :mod:`mxlab.predict` do the work."""
from __future__ import annotations

from pathlib import Path

from mxlab import workspace


def cmd_env(args) -> int:
    """``export`` lines for the stores in effect: ``eval "$(mxlab env)"``."""
    import shlex

    from mxlab.tuning.storage import storage_url

    values = {"MXLAB_ROOT": str(workspace.root()), "MLFLOW_TRACKING_URI": workspace.mlflow_uri(),
              "MXLAB_OPTUNA_STORAGE": storage_url(None)}
    for key, value in values.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_runs(args) -> int:
    from mxlab.runs import list_runs, table

    table(list_runs(args.name, args.limit))
    return 0


def cmd_show(args) -> int:
    from mxlab.runs import show

    show(args.run_id)
    return 0


def cmd_compare(args) -> int:
    from mxlab.runs import compare

    compare(args.refs, args.plot)
    return 0


def cmd_predict(args) -> int:
    from mxlab import predict

    if (args.images is None) == (args.image is None):
        raise ValueError("predict needs one of --images N (test images) or --image FILE.png (a picture)")
    if args.image is not None:
        predict.predict_picture(args.run_id, args.image)
    else:
        predict.predict_test_images(args.run_id, args.images, args.seed)
    return 0


def cmd_completion(args) -> int:
    from mxlab.completion import script

    from mxlab.cli import build_parser

    print(script(build_parser(), args.shell), end="")
    return 0


def add_run_commands(sub) -> None:
    p = sub.add_parser("env", help="export lines of the stores in effect: eval \"$(mxlab env)\" for MLflow's CLI")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("runs", help="an experiment's runs: id, name, status, epochs, final metrics, duration")
    p.add_argument("name")
    p.add_argument("--limit", type=int, default=20, help="newest runs shown (default 20)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="one run: params, final metrics, tags, artifacts and its logged model")
    p.add_argument("run_id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="runs side by side (an experiment name means its latest finished run), "
                                       "with the book's values")
    p.add_argument("refs", nargs="+", metavar="NAME|RUN_ID")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also overlay their validation curves in FILE.png")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="a run's model on N test images (beside their labels) or on a picture")
    p.add_argument("run_id")
    p.add_argument("--images", type=int, metavar="N", help="the first N Fashion-MNIST test images")
    p.add_argument("--seed", type=int, help="with --images: N random test images drawn with this seed")
    p.add_argument("--image", type=Path, metavar="FILE.png", help="classify a picture (resized, made grey)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("completion", help="shell completion: eval \"$(mxlab completion bash)\" (or zsh)")
    p.add_argument("shell", choices=["bash", "zsh"])
    p.set_defaults(func=cmd_completion)
