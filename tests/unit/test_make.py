"""`make run` installs only what running needs, once per environment, and never the test tools."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _dry_run(workdir: Path, target: str) -> str:
    done = subprocess.run(
        ["make", "-n", target, f"PYTHON={sys.executable}"], cwd=workdir, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_the_runtime_once_and_no_test_tools(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    first = _dry_run(tmp_path, "run")
    assert 'pip install -q -c constraints.txt -e ".[api,worker,client]"' in first
    assert "chromium" not in first and ".[dev]" not in first
    assert "./infra/run-local.sh" in first
    # Installed: the stamp of this Python environment is newer than the dependency lists.
    key = f"{sys.prefix}:{os.lstat(sys.executable).st_ino}"
    stamps = tmp_path / ".make" / hashlib.sha1(key.encode()).hexdigest()[:12]
    stamps.mkdir(parents=True)
    (stamps / "run").touch()
    again = _dry_run(tmp_path, "run")
    assert "pip install" not in again and "apt-get" not in again and "./infra/run-local.sh" in again
    # A changed dependency list installs again.
    later = time.time() + 5
    os.utime(tmp_path / "pyproject.toml", (later, later))
    assert "pip install" in _dry_run(tmp_path, "run")
    # The tests bring their own tools.
    assert ".[dev]" in _dry_run(tmp_path, "test") and "chromium" in _dry_run(tmp_path, "test")
