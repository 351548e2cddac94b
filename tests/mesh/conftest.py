"""Fixtures of the mesh tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .envoykit import Mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with contextlib.AsyncExitStack() as exits:
        yield Mesh(tmp_path, exits)
