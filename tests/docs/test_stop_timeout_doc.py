"""README's account of a Ctrl-C gives the launcher's stop timeout as a number: it is DEFAULT_STOP_TIMEOUT, the
sum of the services' grace, their shutdown hooks' budget and their last export, which a change to any of them
moves without a word in README."""

from __future__ import annotations

from pathlib import Path

from shopmesh_platform.stack import DEFAULT_STOP_TIMEOUT

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_gives_the_launchers_stop_timeout_as_it_is() -> None:
    text = " ".join(README.read_text().split())
    assert f"each process has {DEFAULT_STOP_TIMEOUT:g} s from its SIGTERM to stop" in text
    assert f"`[launcher] still running {DEFAULT_STOP_TIMEOUT:g}s after SIGTERM: SIGKILL`" in text
