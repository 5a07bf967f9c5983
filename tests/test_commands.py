"""The commands researchers reach for: help, version, env, runs, show, compare, predict, completion."""
from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from mxlab import runner, tracking
from mxlab.cli import main
from mxlab.spec import load_spec

pytestmark = pytest.mark.slow   # tracked runs read back through the commands: `make test`, not test-fast


def test_bare_mxlab_prints_help_and_version_answers(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mxlab") and "eval \"$(mxlab env)\"" in out and "compare" in out
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == "mxlab 0.1.0"


def test_env_exports_the_stores_in_effect(workspace, capsys, monkeypatch):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"export MLFLOW_TRACKING_URI=sqlite:///{workspace}/mlruns/mlflow.db" in out
    assert f"export MXLAB_OPTUNA_STORAGE=sqlite:///{workspace}/mlruns/optuna.db" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert main(["env"]) == 0
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5999" in capsys.readouterr().out
    # What the shell does with it: eval, then MLflow sees the workspace.
    script = f"eval \"$({sys.executable} -m mxlab.cli env)\"; echo \"$MLFLOW_TRACKING_URI\""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "http://127.0.0.1:5999"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts(capsys, shell, tmp_path):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "complete -o default -F _mxlab mxlab" in script and "predict) opts=" in script and "--images" in script
    path = tmp_path / "completion.sh"
    path.write_text(script)
    binary = shutil.which(shell)
    if shell == "bash":   # bash is everywhere; zsh may not be: its script is bash's behind bashcompinit
        assert subprocess.run([binary, "-n", str(path)]).returncode == 0
        done = subprocess.run([binary, "-c", f"source {path}; COMP_WORDS=(mxlab pre); COMP_CWORD=1; _mxlab; "
                                             f"echo ${{COMPREPLY[@]}}"], capture_output=True, text=True)
        assert done.stdout.split() == ["predict"]


def test_runs_show_compare_predict(workspace, capsys, tmp_path):
    first = runner.run(load_spec("softmax", ["train.epochs=2", "data.limit=600", "data.val_fraction=0.2"]),
                       progress=False)
    second = runner.run(load_spec("softmax", ["train.epochs=1", "data.limit=600", "train.lr=0.3"]), progress=False)

    assert main(["runs", "softmax"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run_id", "name", "status", "epochs"] and "duration" in lines[0]
    assert lines[1].startswith(second.run_id) and "softmax data.limit=600 train.epochs=1 train.lr=0.3" in lines[1]
    assert lines[2].startswith(first.run_id) and " FINISHED " in lines[2]

    assert main(["show", first.run_id]) == 0
    out = capsys.readouterr().out
    assert f"run {first.run_id}" in out and "FINISHED, 2 epochs" in out
    assert "  train.lr = 0.1" in out and "  test/acc = " in out and "spec.yaml" in out and "logged model m-" in out

    plot = tmp_path / "curves.png"
    assert main(["compare", "softmax", first.run_id, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["metric", "softmax", second.run_id[:8], "book", "softmax", first.run_id[:8], "book"]
    test_acc = next(line for line in out if line.startswith("test/acc")).split()
    assert test_acc[2] == test_acc[4] == "0.841"   # the book's softmax test accuracy beside each run
    assert plot.stat().st_size > 1000

    assert main(["predict", first.run_id, "--images", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["test#", "true", "predicted", "prob"] and out[1].split()[1] == "Ankle"   # test #0
    assert out[-1].endswith("/5 correct")

    from PIL import Image

    from mxlab.predict import test_images

    _, images, labels = test_images(1)
    picture = tmp_path / "shirt.png"
    Image.fromarray(255 - np.kron(images[0], np.ones((3, 3), dtype=np.uint8))).save(picture)   # dark on light
    assert main(["predict", first.run_id, "--image", str(picture)]) == 0
    out = capsys.readouterr().out
    assert "(inverted: dark on light)" in out and out.count("\n") == 4

    assert main(["show", "0" * 32]) == 2
    assert "is not in" in capsys.readouterr().err
    assert main(["predict", first.run_id]) == 2
