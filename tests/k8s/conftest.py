"""Fixtures of the Kubernetes delivery tests: the charts rendered once per session with the real Helm v4
SDK (k8s/render.py), every value set, into a folder that checkov and kubernetes-validate read."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .k8skit import Docs, render, tool


@pytest.fixture(scope="session")
def helm_dir() -> Iterator[Path]:
    with render.prepared_copy() as copy:
        yield copy


@pytest.fixture(scope="session")
def render_dir(helm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("render") / "render"
    render.write_all(helm_dir, out)
    yield out
    run = _checkov["run"]
    if run is not None and run.process.poll() is None:
        run.process.kill()
        run.process.wait()


@dataclass(frozen=True)
class CheckovRun:
    """checkov running in the background, its output going to files: its JSON report is far more than a pipe
    holds (64 KiB), and nothing reads it until its test does, so through a pipe checkov would stop on its
    next write and not finish in the background at all."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def finished(self, timeout: float) -> tuple[int, str, str]:
        """Its exit status, stdout and stderr, once it exits (at most `timeout` seconds)."""
        returncode = self.process.wait(timeout)
        return returncode, self.stdout.read_text(), self.stderr.read_text()


_checkov: dict[str, CheckovRun | None] = {"run": None}


@pytest.fixture(scope="session")
def checkov_report(render_dir: Path) -> CheckovRun:
    """checkov over the whole render folder, once. Started as soon as the manifests exist (see
    `start_checkov`), so that its half minute overlaps the other tests."""
    return start_checkov(render_dir)


def start_checkov(render_dir: Path) -> CheckovRun:
    if _checkov["run"] is None:
        # Beside the render folder, not in it: checkov reads every file there.
        stdout, stderr = render_dir.parent / "checkov.json", render_dir.parent / "checkov.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    tool("checkov"),
                    "--directory",
                    str(render_dir),
                    "--framework",
                    "kubernetes",
                    "--output",
                    "json",
                    "--compact",
                    "--skip-download",
                    "--soft-fail",
                ],
                stdout=out,
                stderr=err,
            )
        _checkov["run"] = CheckovRun(process, stdout, stderr)
    return _checkov["run"]


@pytest.fixture(scope="session", autouse=True)
def _checkov_early(request: pytest.FixtureRequest) -> None:
    """Start checkov in the background at the beginning of a session that will run its test. A pytest-xdist
    worker collects every test but runs only its share (whole files with --dist loadfile): there checkov starts
    with test_render.py's first test, on the one worker that runs it, instead of on both."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    if any(item.name == "test_checkov_finds_nothing" for item in request.session.items):
        start_checkov(request.getfixturevalue("render_dir"))


@pytest.fixture(scope="session")
def rendered(render_dir: Path) -> dict[tuple[str, str], Docs]:
    """(value set, chart) -> every object the chart renders (hooks included)."""
    result: dict[tuple[str, str], Docs] = {}
    for value_set in render.VALUE_SETS:
        for chart in render.all_charts():
            docs: Docs = []
            for path in sorted((render_dir / value_set / chart).rglob("*.yaml")):
                docs.extend(render.documents(path.read_text()))
            result[value_set, chart] = docs
    return result
