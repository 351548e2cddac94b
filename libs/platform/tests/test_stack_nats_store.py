"""A data folder whose nats-server was stopped in its first milliseconds (Ctrl-C as `make run` starts) starts again."""

from __future__ import annotations

from pathlib import Path

from shopmesh_platform.stack import NATS, Stack


async def test_a_storage_probe_a_stopped_nats_server_left_does_not_keep_the_next_start_from_being_ready(
    tmp_path: Path,
) -> None:
    # JetStream checks its store is writable with a file `_test_<n>` it removes at once; a server stopped in
    # between left it, the next took it for an account it could not resolve, and /healthz never answered 200
    # (the launcher gave up: "run exited before it was ready").
    data = tmp_path / "data"
    store = data / NATS / "jetstream"
    store.mkdir(parents=True)
    (store / "_test_1100339743").touch()
    async with Stack.for_tests(data, services=[], startup_timeout=20) as stack:
        assert stack.nats_url
    assert not (store / "_test_1100339743").exists()
