"""The `edge` fixture's Envoy (conftest): run as long as the tests need it, however much it writes."""

from __future__ import annotations

import httpx

from .conftest import Edge

# Linux's default pipe capacity: a writer whose output nobody reads blocks past it.
PIPE_BYTES = 64 * 1024


def test_the_edge_answers_on_after_writing_more_output_than_a_pipe_holds(edge_process: Edge) -> None:
    # Envoy at debug level writes a few KiB for each request; the fixture must not hold that output in a pipe
    # nobody reads, or Envoy blocks on its next write and every call after it hangs.
    edge = edge_process
    with httpx.Client(timeout=10) as client:
        client.post(f"{edge.admin_url}/logging?level=debug").raise_for_status()
        try:
            for _ in range(2000):
                assert client.get(f"{edge.url}/healthz").status_code == 200
                if edge.log.stat().st_size > 4 * PIPE_BYTES:
                    break
            assert edge.log.stat().st_size > 4 * PIPE_BYTES
        finally:
            client.post(f"{edge.admin_url}/logging?level=warning").raise_for_status()
