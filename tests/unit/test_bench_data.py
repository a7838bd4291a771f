"""Benchmarks fail with a clear message when their photo folder is missing (a fresh clone has none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import MissingData, labelled_images

ROOT = Path(__file__).parents[2]


def test_a_missing_data_folder_is_a_clear_exit(tmp_path: Path) -> None:
    with pytest.raises(MissingData) as caught:
        labelled_images(tmp_path / "nowhere")
    assert "benchmark data folder" in str(caught.value) and "--data DIR" in str(caught.value)


@pytest.mark.parametrize("script", ["bench/quality.py", "bench/no_match.py", "bench/clusters.py"])
def test_benchmark_scripts_say_so_instead_of_a_traceback(script: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, script, "--data", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode != 0
    assert "benchmark data folder" in done.stderr and "Traceback" not in done.stderr
