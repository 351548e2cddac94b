"""`make run` once it is ready: the table, the printed commands that work, each service reached through its
sidecar or on PostgreSQL, and the clean stop on Ctrl-C.

It adapts to what is installed: with the catalog package it runs the catalog and proves it SERVING
and the printed grpcurl commands working; without it, NATS alone, and the table says why.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import nats
from grpc_health.v1 import health_pb2

from shopmesh_chassis.local_stack import PRIVATE_FILE_MODE, PRIVATE_FOLDER_MODE, STACK_FILE
from shopmesh_chassis.testing import eventually, health_status
from shopmesh_platform import run
from shopmesh_platform.topology import SERVICES
from shopmesh_platform.traces import load

from .run_kit import REPOSITORY, accepting, ctrl_c, database_port, gone, launched, said_by, table_rows

# Only bound a hang: a loaded machine may take seconds to connect and answer, more than health_status's 1 s
# default. One health call, not a poll: nothing listening refuses it at once, so it still reads the state the
# launcher's "ready" claims.
HEALTH_CALL_SECONDS = 30


NATS_CONNECT_SECONDS = 30
# libpq reads no password from a file that is not there (/dev/null: it warns "not a plain file").
NO_PASSFILE = "/nonexistent/shopmesh.pgpass"


def printed_commands(lines: list[str]) -> list[str]:
    """The indented lines under "Try:"."""
    if "Try:" not in lines:
        return []
    following = lines[lines.index("Try:") + 1 :]
    commands = [line.strip() for line in following[: following.index("")]]
    # Written as a developer copies them at the repository root (`.venv/bin/grpcurl ...`).
    grpcurl = os.path.relpath(Path(sys.executable).parent / "grpcurl", REPOSITORY)
    assert all(command.startswith(f"{grpcurl} ") for command in commands)
    return commands


async def run_printed_command(command: str) -> str:
    argv = shlex.split(command)
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPOSITORY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, f"{command}: {err.decode()}"
    return out.decode()


async def test_run_serves_prints_table_and_working_commands_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Only the catalog, so that the other services do not decide this test. It is part of the workspace: a
    # missing package is a broken environment, not a variant of this test (which would then prove nothing).
    assert importlib.util.find_spec("shopmesh_catalog") is not None, "shopmesh_catalog is not importable"
    async with launched(tmp_path / "data", "--services", "catalog") as (process, lines):
        rows = table_rows(lines)

        assert rows["nats"]["state"] == "ready"
        nc = await nats.connect(rows["nats"]["grpc"], connect_timeout=NATS_CONNECT_SECONDS)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()
        assert any(line.split(" | ")[0].strip() == "nats" and "Server is ready" in line for line in lines)
        assert rows["traces"]["state"] == "ready"

        commands = printed_commands(lines)
        assert rows["catalog"]["state"] == "SERVING"
        status = await health_status(rows["catalog"]["grpc"], timeout=HEALTH_CALL_SECONDS)
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert any(line.split(" | ")[0].strip() == "catalog" for line in lines)
        assert len(commands) == 3
        outputs = [await run_printed_command(command) for command in commands]
        assert "shopmesh.catalog.v1.CatalogService" in outputs[0].split()
        assert json.loads(outputs[1]) == {"status": "SERVING"}
        assert 1 <= len(json.loads(outputs[2])["products"]) <= 3
        # Every service exports its spans to the launcher's trace sink.
        list_products = "/shopmesh.catalog.v1.CatalogService/ListProducts"
        await eventually(
            lambda: any(t.roots[0]["name"] == list_products for t in load(tmp_path / "data" / "traces")),
            "the ListProducts span in the trace sink",
        )
        for name in SERVICES:
            if name != "catalog":
                assert rows[name]["state"] == "not started (--services)"

        assert "stopped cleanly" in await ctrl_c(process)
    pids = [int(row["pid"]) for row in rows.values() if row["pid"] != "-"]
    assert pids
    assert all(gone(pid) for pid in pids)
    # Everything a run wrote there is the stack's: --reset takes it all (and refuses only a stranger's file).
    run.reset_data_dir(tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


async def test_the_launcher_says_which_wave_it_starts_and_when_it_serves_in_lines_of_its_own(tmp_path: Path) -> None:
    """Without these lines a loaded machine showed only NATS' output for half a minute. They are the launcher's
    own lines, beside the services' JSON ones (each still one JSON document after its prefix)."""
    async with launched(tmp_path / "data", "--services", "catalog", "--http-port", "0", "--log-format", "json") as (
        process,
        lines,
    ):
        started = lines.index("starting catalog ...")
        [serving] = [i for i, line in enumerate(lines) if re.fullmatch(r"  \.\.\. serving \(\d+\.\d s\)", line)]
        catalog = [i for i, line in enumerate(lines) if said_by("catalog")(line)]
        assert catalog
        assert started < catalog[0] < serving < lines.index(run.READY_LINE)
        for i in catalog:
            assert isinstance(json.loads(lines[i].split(" | ", 1)[1]), dict), lines[i]
        await ctrl_c(process)


def readable_by_others(data_dir: Path) -> list[str]:
    """What under `data_dir` (itself included) is not this user's alone: a file not 0600, a folder not 0700.
    Links are left out: their mode means nothing (the sockets' one points to a folder mkdtemp made 0700)."""
    found = []
    for path in [data_dir, *data_dir.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        private = PRIVATE_FOLDER_MODE if stat.S_ISDIR(info.st_mode) else PRIVATE_FILE_MODE
        if stat.S_IMODE(info.st_mode) != private:
            found.append(f"{path.relative_to(data_dir)} {stat.S_IMODE(info.st_mode):04o}")
    return found


async def test_run_with_the_envoy_mesh_puts_the_service_behind_its_sidecar_and_prints_a_call_that_works(
    tmp_path: Path,
) -> None:
    """And everything it writes is this user's alone, as the data directory promises: the sidecars' and the
    edge's Envoy configurations, the contracts, the certificates and mesh/ itself were 0644 and 0755 (written
    under the launcher's umask, where only the keys were written 0600)."""
    async with launched(tmp_path / "data", "--services", "catalog", "--mesh", "envoy") as (process, lines):
        assert readable_by_others(tmp_path / "data") == []
        rows = table_rows(lines)
        assert rows["catalog"]["state"] == "SERVING"
        assert rows["catalog-sidecar"]["state"] == "ready"
        # Plaintext reaches the service only where it listens behind its sidecar (the sidecar's row: its Unix
        # socket, no TCP port), not at its address.
        assert rows["catalog-sidecar"]["grpc"].startswith("unix:")
        assert await health_status(rows["catalog"]["grpc"], timeout=HEALTH_CALL_SECONDS) is None
        status = await health_status(rows["catalog-sidecar"]["grpc"], timeout=HEALTH_CALL_SECONDS)
        assert status == health_pb2.HealthCheckResponse.SERVING
        [intro] = [line for line in lines if line.startswith("Call catalog as gateway")]
        command = lines[lines.index(intro) + 1].strip()
        assert json.loads(await run_printed_command(command)) == {"status": "SERVING"}
        # And the refusal it shows: a method the gateway does not call, refused by the sidecar (grpcurl exits 7).
        [refusal] = [line for line in lines if line.startswith("A method gateway does not call")]
        command = lines[lines.index(refusal) + 1].strip()
        assert command.endswith(" shopmesh.catalog.v1.CatalogService/BatchGetProducts")
        refused = await asyncio.create_subprocess_exec(
            *shlex.split(command), cwd=REPOSITORY, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await asyncio.wait_for(refused.communicate(), 30)
        assert "Code: PermissionDenied" in err.decode()
        assert "RBAC: access denied" in err.decode()
        # The plain commands under "Try:" work too: they go to the catalog's own socket (grpcurl -unix).
        tried = [await run_printed_command(printed) for printed in printed_commands(lines)]
        assert json.loads(tried[1]) == {"status": "SERVING"}
        assert "stopped cleanly" in await ctrl_c(process)
    assert all(gone(int(row["pid"])) for row in rows.values() if row["pid"] != "-")


async def test_run_on_postgres_gives_each_service_a_database_named_after_it_that_the_banners_psql_opens(
    tmp_path: Path,
) -> None:
    """Each service gets a database named after it on a throwaway PostgreSQL server, which ends with the launcher.
    The names were `test_<random>`, and the banner's psql opened the `postgres` database, without a shop table:
    which database was whose took reading /proc/<pid>/environ. The server listens on 127.0.0.1, for every
    account of the machine: a connection without its password is refused (it had trust authentication: any
    account was its superuser). The service connects with the password in its DATABASE_URL; the banner's psql
    command, as printed, opens the service's database by the file it names; the password is neither in the
    launcher's output nor in stack.json. One launch for all of it: each start on PostgreSQL runs initdb."""
    data = tmp_path / "data"
    async with launched(data, "--services", "catalog", "--postgres", ready_within=120) as (process, lines):
        port = database_port(lines)
        assert table_rows(lines)["catalog"]["state"] == "SERVING", "the catalog did not get in"
        products = json.loads(await run_printed_command(printed_commands(lines)[2]))["products"]
        assert products, "the catalog seeded its PostgreSQL database"
        assert not (data / "catalog.db").exists(), "the catalog used SQLite"
        clean = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        psql = ["psql", "-w", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"]
        query = ["-c", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"]
        refused = await run_with(psql + query, {**clean, "PGPASSFILE": NO_PASSFILE})
        assert refused.returncode != 0, f"got in as the superuser with no password: {refused.stdout}"
        assert "no password supplied" in refused.stderr, refused.stderr
        [printed] = [shlex.split(line) for line in lines if line.startswith("  PGPASSFILE=")]
        assignment, *argv = printed
        name, _, passfile = assignment.partition("=")
        accepted = await run_with([*argv, "-w", "-At", *query], {**clean, name: passfile})
        assert accepted.stdout.strip() == "t", accepted.stderr
        shop = ["-c", "SELECT current_database(), count(*) > 0 FROM products"]
        opened = await run_with([*argv, "-w", "-At", *shop], {**clean, name: passfile})
        assert opened.stdout.strip() == "catalog|t", opened.stderr
        listed = ["-c", "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'"]
        databases = await run_with([*argv, "-w", "-At", *listed], {**clean, name: passfile})
        assert databases.stdout.split() == ["catalog"], databases.stderr
        password = (await asyncio.to_thread(Path(passfile).read_text)).strip().rsplit(":", 1)[1]
        assert password not in await asyncio.to_thread((data / STACK_FILE).read_text)
        said = "\n".join(lines) + await ctrl_c(process)
    assert password not in said, "the launcher printed the password"
    assert not accepting(port), "the throwaway PostgreSQL outlived the launcher"


async def run_with(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True, text=True, timeout=30)
