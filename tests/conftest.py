"""System-test fixtures: the real services as processes, started by the same launcher as `make run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopmesh_chassis.tracing import configure_tracing


@pytest.fixture(scope="session", autouse=True)
def _tracing() -> None:
    configure_tracing("system-tests", endpoint=None)


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
