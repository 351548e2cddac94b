"""The shared pytest plugin fails a skipped or xfailed test: the suite never goes green without a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = """
import pytest

def test_skipped():
    pytest.skip("a tool is missing")

@pytest.mark.xfail
def test_expected_to_fail():
    assert False

def test_runs():
    assert True
"""


def test_a_skipped_or_xfailed_test_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(TESTS)
    plugins = ["-p", "no:cacheprovider", "-p", "shopmesh_chassis.testing.pytest_plugin"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins, "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 failed, 1 passed" in run.stdout, run.stdout
    assert "test_skipped was skipped (Skipped: a tool is missing)" in run.stdout, run.stdout
