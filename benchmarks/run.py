"""`make bench`: mxlab's training path against the book's loop and PyTorch eager, side by side, as ratios; then the
fixed costs (a whole `mxlab run`, `mxlab list`, a study's cost per trial, `mxlab ui`) and what the median pruner
saves a 20-trial lenet study. Writes results.json.

Each contender runs in a fresh process (so peak memory is its own) on the same data, network, batch, optimizer,
seed and threads (see ``contenders.py``). The machine is shared, so contenders run in rounds, in a rotated
order, and every figure is a ratio within one round; the median over rounds is reported, with the load seen.
Throughput is each process's best epoch of the training phase (forward, backward, update), as
``perf/samples_per_second``. mxlab's figures come from :func:`mxlab.runner.run`, the path of ``mxlab run``.
It prints measurements; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

LENET_KINDS = ("book", "mxlab", "torch", "mxlab+mlflow")
RESNET_KINDS = ("mxlab-resnet", "torch-resnet")


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def one(kind: str, limit: int, epochs: int) -> None:
    from contenders import KINDS

    result = KINDS[kind](limit, epochs)
    result["samples_per_second"] = max(result["epoch_samples_per_second"])
    result["samples_per_cpu_second"] = max(result["epoch_samples_per_cpu_second"])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def spawn(kind: str, limit: int, epochs: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--limit", str(limit), "--epochs", str(epochs)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(kinds: tuple, limit: int, epochs: int, repeats: int) -> list[dict]:
    """``repeats`` rounds of every kind, the order rotated each round so that no contender always goes first."""
    found = []
    for r in range(repeats):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        results = {"load_before": os.getloadavg()[0]}
        for kind in order:
            results[kind] = spawn(kind, limit, epochs)
            print(f"  round {r + 1} {kind:<13} {results[kind]['samples_per_second']:>8,.0f} img/s "
                  f"{results[kind]['samples_per_cpu_second']:>8,.0f} img/CPU-s  peak RSS "
                  f"{results[kind]['peak_rss_mb']:,.0f} MB", flush=True)
        found.append(results)
    return found


def ratio(found: list[dict], a: str, b: str, key: str = "samples_per_second") -> dict:
    values = [r[a][key] / r[b][key] for r in found if a in r and b in r]
    return {"median": statistics.median(values), "per_round": values} if values else {}


def machine() -> dict:
    import numpy

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "numpy": numpy.__version__,
            "load_average_at_start": os.getloadavg()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from importlib import metadata

    for dist in ("mxnet", "torch", "mlflow", "optuna"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=10000, help="training images for LeNet (default 10,000)")
    parser.add_argument("--resnet-limit", type=int, default=2048, help="training images for ResNet-18 (0: skip)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per process; its best one counts")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the contenders")
    parser.add_argument("--study-trials", type=int, default=10, help="trials for the per-trial cost (0: skip)")
    parser.add_argument("--no-ui", action="store_true", help="skip timing `mxlab ui`")
    parser.add_argument("--pruning-trials", type=int, default=20,
                        help="trials of each lenet study, median pruner against none (0: skip; about 25 minutes)")
    parser.add_argument("--pruning-limit", type=int, default=0,
                        help="training images of those studies (default 0: the whole split, the book's budget)")
    parser.add_argument("--output", default=str(HERE / "results.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.one, args.limit, args.epochs)
        return 0
    import fixed

    started = time.time()
    torch = have_torch()
    info = machine()
    print(f"machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, load average {info['load_average_at_start'][0]:.1f}, "
          f"Python {info['python']}, mxnet {info['mxnet']}, torch {info['torch'] or 'not installed'}")
    print(f"LeNet on Fashion-MNIST, {args.limit} images, batch 256, {args.epochs} epochs (best counts), "
          f"{args.repeats} rounds")
    lenet = rounds(LENET_KINDS if torch else tuple(k for k in LENET_KINDS if k != "torch"), args.limit, args.epochs,
                   args.repeats)
    resnet = []
    if torch and args.resnet_limit:
        print(f"ResNet-18 at 28x28, {args.resnet_limit} images, batch 256")
        resnet = rounds(RESNET_KINDS, args.resnet_limit, args.epochs, args.repeats)
    print("fixed costs (throwaway stores)")
    costs = fixed.measure(args.study_trials, not args.no_ui, args.pruning_trials, args.pruning_limit)
    figures = {
        "lenet_mxlab_over_book": ratio(lenet, "mxlab", "book"),
        "lenet_mxlab_over_torch": ratio(lenet, "mxlab", "torch"),
        "resnet18_mxlab_over_torch": ratio(resnet, "mxlab-resnet", "torch-resnet"),
        "lenet_mxlab_over_book_per_cpu_second": ratio(lenet, "mxlab", "book", "samples_per_cpu_second"),
        "lenet_mxlab_over_torch_per_cpu_second": ratio(lenet, "mxlab", "torch", "samples_per_cpu_second"),
        "resnet18_mxlab_over_torch_per_cpu_second": ratio(resnet, "mxlab-resnet", "torch-resnet",
                                                          "samples_per_cpu_second"),
        "lenet_tracked_over_untracked_throughput": ratio(lenet, "mxlab+mlflow", "mxlab"),
        "lenet_peak_rss_mxlab_over_book": ratio(lenet, "mxlab", "book", "peak_rss_mb"),
        "callback_share_of_training_phase_tracked": statistics.median(r["mxlab+mlflow"]["callback_share"]
                                                                       for r in lenet),
        "run_linreg_wall_seconds": costs["run_linreg"]["wall_seconds"],
        "run_linreg_in_import_mxnet_units": costs["run_linreg"]["in_import_mxnet_units"],
        "list_wall_seconds": costs["list"]["wall_seconds"],
    }
    if "study" in costs:
        figures["study_wall_seconds_per_trial"] = costs["study"]["wall_seconds_per_trial"]
        figures["study_wall_seconds_per_trial_beyond_training"] = \
            costs["study"]["wall_seconds_per_trial_beyond_training"]
    if "ui" in costs:
        figures["ui_tree_rss_mb"] = costs["ui"]["tree_rss_mb"]
        figures["ui_seconds_to_answer"] = costs["ui"]["seconds_to_answer"]
    if "pruning" in costs:
        figures["lenet_study_time_pruned_over_unpruned"] = costs["pruning"]["time_pruned_over_unpruned"]
        figures["lenet_study_best_value_pruned_minus_unpruned"] = costs["pruning"]["best_value_difference"]
    print("figures (ratios: median over rounds)")
    for key, value in figures.items():
        shown = value.get("median") if isinstance(value, dict) else value
        print(f"  {key:<45} {'-' if shown is None else f'{shown:.3f}'}")
    info["load_average_at_end"] = os.getloadavg()
    Path(args.output).write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "seconds": time.time() - started,
        "machine": info, "settings": vars(args), "figures": figures, "lenet_rounds": lenet, "resnet_rounds": resnet,
        "fixed_costs": costs}, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
