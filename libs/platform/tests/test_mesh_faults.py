"""The fault command's arguments and its runtime values, and what it says when no sidecar answers (the
faults themselves, on real sidecars: tests/mesh)."""

from __future__ import annotations

import argparse
import io

import grpc
import pytest

from shopmesh_chassis.testing import free_port
from shopmesh_platform.mesh.faults import (
    ABORT_PERCENT,
    ABORT_STATUS,
    DELAY_MS,
    DELAY_PERCENT,
    Fault,
    duration_ms,
    local_admin_url,
    main,
)


def test_a_fault_sets_its_runtime_keys_and_clears_the_others() -> None:
    delay = Fault(delay_ms=250, percent=30).runtime()
    assert delay == {DELAY_PERCENT: "30", DELAY_MS: "250", ABORT_PERCENT: "", ABORT_STATUS: ""}
    abort = Fault(abort=grpc.StatusCode.RESOURCE_EXHAUSTED).runtime()
    assert abort == {DELAY_PERCENT: "", DELAY_MS: "", ABORT_PERCENT: "100", ABORT_STATUS: "8"}
    assert set(Fault().runtime().values()) == {""}
    both = Fault(delay_ms=10, abort=grpc.StatusCode.UNAVAILABLE, percent=5)
    assert Fault.from_runtime(both.runtime()) == both
    assert str(both) == "delay 10 ms, abort UNAVAILABLE on 5 % of calls"


def test_durations_read_as_people_write_them() -> None:
    assert duration_ms("3s") == 3000
    assert duration_ms("1.5s") == 1500
    assert duration_ms("250ms") == 250
    for bad in ("3", "0s", "-1s", "1m"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration_ms(bad)


def test_the_local_admin_ports_are_the_sidecars_of_make_run() -> None:
    assert local_admin_url("catalog") == "http://127.0.0.1:15002"
    assert local_admin_url("catalog-canary") == "http://127.0.0.1:15332"


def test_no_sidecar_is_said_in_one_line_and_nonsense_is_refused_by_the_parser() -> None:
    out, err = io.StringIO(), io.StringIO()
    admin = f"http://127.0.0.1:{free_port()}"
    assert main(["catalog", "--delay", "1s", "--admin", admin], out, err) == 1
    assert err.getvalue().startswith(f"error: no sidecar answers at {admin} (")
    assert err.getvalue().endswith("is `make run MESH=envoy` running?\n")
    assert err.getvalue().count("\n") == 1
    nonsense = (
        ["catalog"],
        ["catalog", "--abort", "OK"],
        ["catalog", "--delay", "1s", "--percent", "0"],
        [],
        # The launcher refuses a canary of the gateway: no sidecar of one could ever answer.
        ["gateway-canary", "--delay", "1s"],
    )
    for argv in nonsense:
        with pytest.raises(SystemExit) as refused:
            main(argv, io.StringIO(), io.StringIO())
        assert refused.value.code == 2, argv
