"""Fixtures of the Kubernetes delivery tests: the charts rendered once per session with the real Helm v4
SDK (k8s/render.py), every value set, into a folder that checkov and kubernetes-validate read."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .k8skit import Docs, render, tool


@pytest.fixture(scope="session")
def helm_dir() -> Iterator[Path]:
    with render.prepared_copy() as copy:
        yield copy


@pytest.fixture(scope="session")
def render_dir(helm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # In a folder of its own beside PINNED, which checkov reads as a whole (checked_dir), its output kept out.
    out = tmp_path_factory.mktemp("render") / "checked" / "render"
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
def checkov_report(render_dir: Path, helm_dir: Path) -> CheckovRun:
    """checkov over the whole render folder and the pinned renders, once. Started as soon as the manifests
    exist (see `start_checkov`), so that its half minute overlaps the other tests."""
    return start_checkov(render_dir, helm_dir)


# Beside the render in the folder checkov reads: the gateway of the staging+istio set with its image pinned by
# digest, and with the edge's Envoy image pinned too (test_checkov_finds_nothing_once_the_images_are_pinned).
PINNED = "pinned"
DIGEST = "sha256:" + "0" * 64
PINNINGS: dict[str, dict[str, Any]] = {
    "service": {},
    "both": {"httpApi": {"image": f"envoyproxy/envoy-distroless:v1.40.0@{DIGEST}"}},
}


def checked_dir(render_dir: Path) -> Path:
    """The folder checkov reads: the render and the pinned renders (its report's paths start /render/, /pinned/)."""
    return render_dir.parent


def write_pinned(helm_dir: Path, render_dir: Path) -> None:
    for name, extra in PINNINGS.items():
        pin = {"image": {"digest": DIGEST}}
        values = render.merged_values(render.values_for("staging+istio", helm_dir), pin, extra)
        target = checked_dir(render_dir) / PINNED / name / "gateway.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n---\n".join(render.render(helm_dir, "gateway", "custom", values=values).values()))


def start_checkov(render_dir: Path, helm_dir: Path) -> CheckovRun:
    if _checkov["run"] is None:
        # One checkov run for both tests: each start of checkov alone costs ~6 s of CPU.
        write_pinned(helm_dir, render_dir)
        # Outside the folder it reads: checkov reads every file there.
        stdout, stderr = checked_dir(render_dir).parent / "checkov.json", checked_dir(render_dir).parent / "checkov.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    tool("checkov"),
                    "--directory",
                    str(checked_dir(render_dir)),
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
    with test_render.py's first test, on the one worker that runs it, instead of on every one."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        return
    if any(item.name == "test_checkov_finds_nothing" for item in request.session.items):
        start_checkov(request.getfixturevalue("render_dir"), request.getfixturevalue("helm_dir"))


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
