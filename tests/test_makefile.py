"""The Makefile's own promises: `make help` lists the targets, and `make setup` refuses an unsuitable Python."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_help_lists_every_target():
    out = make("help")
    assert out.returncode == 0
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ") and "variables" not in line}
    assert {"setup", "data", "exp", "tune", "ui", "dashboard", "test", "bench", "list", "check"} <= listed


def test_setup_without_a_suitable_python_says_so(tmp_path):
    out = make("-B", "setup", "PYTHON=")
    assert out.returncode != 0
    assert "no Python 3.10 or 3.11 found" in out.stdout and "PYTHON=" in out.stdout

    fake = tmp_path / "python3.12"
    fake.write_text("#!/bin/sh\necho 3.12.1\nexit 1\n")   # answers, but not as 3.10 or 3.11
    fake.chmod(0o755)
    out = make("-B", "setup", f"PYTHON={fake}")
    assert out.returncode != 0
    assert "mxlab needs 3.10 or 3.11" in out.stdout
    assert (REPO / ".venv" / "bin" / "python").exists()   # the existing environment was left alone
