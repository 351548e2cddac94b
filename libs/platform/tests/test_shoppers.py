"""The simulated shoppers report what the gateway answered and, with --strict, fail on a server fault."""

from __future__ import annotations

import asyncio
import io
import json
import re

import grpc
import pytest

from shopmesh.gateway.v1 import shop_pb2_grpc
from shopmesh_chassis.testing import free_port
from shopmesh_platform.shoppers import main

FAST = ["--shoppers", "2", "--duration", "1", "--think", "0.01,0.05", "--report-every", "0.5"]


def ran(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_strict_shoppers_fail_when_the_gateway_answers_with_server_faults() -> None:
    # A gateway that implements nothing: every call is UNIMPLEMENTED, a fault of the server's own.
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop_pb2_grpc.ShopServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        lenient = await asyncio.to_thread(ran, "--target", target, *FAST)
        strict = await asyncio.to_thread(ran, "--target", target, *FAST, "--strict")
        as_json = await asyncio.to_thread(ran, "--target", target, *FAST, "--json")
    finally:
        await server.stop(None)
    assert lenient[0] == 0
    assert "UNIMPLEMENTED" in lenient[1]
    # --json: one document on stdout, the progress lines on stderr.
    answers = json.loads(as_json[1])
    assert answers["Register"]["UNIMPLEMENTED"] >= 2
    assert all(set(codes) == {"UNIMPLEMENTED"} for codes in answers.values())
    assert " calls (" in as_json[2]
    assert strict[0] == 1
    assert re.fullmatch(r"error: [1-9][0-9]* call\(s\) got a server fault\n", strict[2]), strict[2]


def test_an_unreachable_gateway_is_said_in_one_line() -> None:
    target = f"127.0.0.1:{free_port()}"
    code, _, err = ran("--target", target, *FAST, "--connect-timeout", "0.5")
    assert code == 1
    assert err == f"error: cannot reach the gateway at {target} (is `make run` running?)\n"


def test_an_unreachable_http_api_is_said_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = ran("--http", url, *FAST, "--connect-timeout", "0.5")
    assert code == 1
    assert err == f"error: cannot reach the HTTP/JSON API at {url} (is `make run` running?)\n"


def test_an_http_url_with_a_path_or_no_scheme_is_refused_before_anything_runs() -> None:
    for url in ("127.0.0.1:8080", "http://127.0.0.1:8080/api", "ftp://127.0.0.1:8080"):
        with pytest.raises(SystemExit) as exited:
            main(["--http", url, *FAST])
        assert exited.value.code == 2, url


@pytest.mark.parametrize("shoppers", ["0", "-3"])
async def test_a_crowd_of_no_shoppers_is_refused_as_a_usage_error_not_a_traceback(shoppers: str) -> None:
    # `make shoppers SHOPPERS_ARGS="--shoppers 0"` against a running gateway.
    server = grpc.aio.server()
    shop_pb2_grpc.add_ShopServiceServicer_to_server(shop_pb2_grpc.ShopServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        argv = ["--target", f"127.0.0.1:{port}", "--duration", "1", "--shoppers", shoppers]
        with pytest.raises(SystemExit) as exited:
            await asyncio.to_thread(main, argv, io.StringIO(), io.StringIO())
    finally:
        await server.stop(None)
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "option", [("--report-every", "0"), ("--report-every", "-1"), ("--report-every", "nan"), ("--think", "0,inf")]
)
def test_a_period_that_never_ends_or_never_waits_is_refused_before_anything_runs(option: tuple[str, str]) -> None:
    # A report period of 0 spun on asyncio.wait without sleeping; nan or inf never report or never stop.
    with pytest.raises(SystemExit) as exited:
        main([*FAST, *option], io.StringIO(), io.StringIO())
    assert exited.value.code == 2, option
