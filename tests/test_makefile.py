"""The Makefile's own promises: `make help` lists the targets; `make setup` picks the newest supported Python,
installs the numpy and mxnet that fit it (--no-deps on 3.13), and refuses what it cannot use, in one line.

Setup is exercised with fake interpreters whose `-m venv` makes a venv of fakes logging every pip call: the
logic is tested without the network (a real setup per Python is what CI's own runs are).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

MAKE = shutil.which("make")
VERSION_QUERY = "version_info[:2]"
TOOLS = ("bash", "sh", "ls", "sort", "cat", "mkdir", "cp", "chmod", "rm", "touch", "basename", "dirname", "awk")


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MAKE, "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def fake_python(folder: Path, name: str, version: str | None, log: Path) -> Path:
    """An interpreter that reports ``version`` (or fails like a pyenv shim without that version) and whose
    ``-m venv DIR`` makes ``DIR/bin/python`` (same version) and ``DIR/bin/pip`` (logs its arguments)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if version is None:
        path.write_text("#!/bin/sh\necho \"pyenv: $(basename $0): command not found\" >&2\nexit 127\n")
    else:
        path.write_text(f"""#!/bin/sh
case "$*" in
  *"{VERSION_QUERY}"*) echo {version};;
  "-m venv "*) mkdir -p "$3/bin"; cp "$0" "$3/bin/python"
     printf '#!/bin/sh\\necho "pip $*" >> {log}\\n' > "$3/bin/pip"; chmod +x "$3/bin/pip";;
  *) echo "installed Python {version}";;
esac
""")
    path.chmod(0o755)
    return path


@pytest.fixture
def fakes(tmp_path):
    """A PATH of fake interpreters only, and no pyenv versions, for make to search."""
    bin_dir, log, tools = tmp_path / "bin", tmp_path / "pip.log", tmp_path / "tools"
    tools.mkdir()
    for tool in TOOLS:   # the shell tools the recipe uses, without the machine's own pythons
        (tools / tool).symlink_to(shutil.which(tool))
    env = {"PATH": f"{bin_dir}:{tools}", "PYENV_ROOT": str(tmp_path / "no-pyenv")}

    def setup(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        out = make("setup", f"VENV={tmp_path / 'venv'}", *args, env=env)
        return out, log.read_text().splitlines() if log.exists() else []
    return bin_dir, log, setup


def test_help_lists_every_target():
    out = make("help")
    assert out.returncode == 0
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ") and "variables" not in line}
    assert {"setup", "data", "exp", "tune", "ui", "dashboard", "test", "test-fast", "doctor", "bench", "list",
            "check"} <= listed
    assert "VENV=" in out.stdout and "PYTHON=" in out.stdout


def test_setup_picks_the_newest_python_that_runs(fakes):
    bin_dir, log, setup = fakes
    fake_python(bin_dir, "python3.13", None, log)   # a pyenv shim for a version not selected: skipped
    fake_python(bin_dir, "python3.12", "3.12", log)
    fake_python(bin_dir, "python3.11", "3.11", log)
    out, pip = setup()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"make setup: Python 3.12 ({bin_dir}/python3.12)" in out.stdout and "numpy 1.26" in out.stdout
    assert 'pip install --quiet -e .[cpu,dev]' in pip and not any("--no-deps" in line for line in pip)


def test_setup_on_313_installs_mxnet_without_its_numpy_pin(fakes):
    bin_dir, log, setup = fakes
    fake_python(bin_dir, "python3.13", "3.13", log)
    fake_python(bin_dir, "python3.10", "3.10", log)
    out, pip = setup()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Python 3.13" in out.stdout and "--no-deps" in out.stdout
    assert pip[-2:] == ["pip install --quiet -e .[cpu,dev]", "pip install --quiet --no-deps mxnet==1.9.1"]

    log.unlink()
    out, pip = setup("-B", "GPU=cu112")   # the same venv, now the GPU build: the CPU one goes first
    assert out.returncode == 0, out.stdout + out.stderr
    assert pip[-3:] == ["pip uninstall --quiet --yes mxnet", "pip install --quiet -e .[cu112,dev]",
                        "pip install --quiet --no-deps mxnet-cu112==1.9.1"]


def test_setup_python_chooses(fakes, tmp_path):
    bin_dir, log, setup = fakes
    fake_python(bin_dir, "python3.13", "3.13", log)
    chosen = fake_python(tmp_path / "elsewhere", "python3", "3.10", log)
    out, pip = setup(f"PYTHON={chosen}")
    assert out.returncode == 0 and f"Python 3.10 ({chosen})" in out.stdout and "numpy<1.24" in out.stdout

    # The venv is now 3.10: another Python is refused rather than mixed into it.
    out, _ = setup("-B", f"PYTHON={bin_dir}/python3.13")
    assert out.returncode != 0
    assert "is Python 3.10, not 3.13: remove it, or build beside it with VENV=.venv-3.13" in out.stdout


def test_setup_refuses_what_it_cannot_use(fakes, tmp_path):
    bin_dir, log, setup = fakes
    out, _ = setup()
    assert out.returncode != 0 and "no Python 3.13, 3.12, 3.11 or 3.10 found" in out.stdout
    assert "PYTHON=/path/to/python3.13" in out.stdout

    old = fake_python(tmp_path / "old", "python3.9", "3.9", log)
    out, _ = setup(f"PYTHON={old}")
    assert out.returncode != 0 and f"{old} is Python 3.9; mxlab supports 3.10, 3.11, 3.12 and 3.13" in out.stdout
    out, _ = setup("PYTHON=python3.13")   # a shim that does not run
    assert out.returncode != 0 and "python3.13 is Python (does not run)" in out.stdout
    out, _ = setup("GPU=cu118")
    assert out.returncode != 0 and "GPU=cu118 is not supported; allowed: GPU=cu112" in out.stdout
    assert not (tmp_path / "venv").exists()


def test_the_real_venv_is_left_alone():
    """An existing venv keeps its Python: a PYTHON= of another version is refused before anything changes."""
    before = (REPO / ".venv" / "bin" / "python").resolve()
    out = make("-B", "setup", "PYTHON=/nonexistent/python3.12")
    assert out.returncode != 0
    assert (REPO / ".venv" / "bin" / "python").resolve() == before
