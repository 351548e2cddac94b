"""The data directory's mode: the launcher makes a folder of its own private, and leaves anyone else's as its
owner set it, saying in one line when others may read the data it writes there."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shopmesh_platform.http_api import HttpApi, bootstrap, descriptor_set
from shopmesh_platform.mesh.envoy import write_bootstrap
from shopmesh_platform.ports import PortPlan
from shopmesh_platform.stack import Stack, hold_data_dir


def taken(data_dir: Path) -> list[str]:
    """Take the data directory as the launcher does first (its lock), let it go; what it warned."""
    said: list[str] = []
    os.close(hold_data_dir(data_dir, warn=said.append))
    return said


def mode(folder: Path) -> int:
    return stat.S_IMODE(folder.stat().st_mode)


def test_a_sticky_folder_everyone_writes_to_keeps_its_mode_and_the_launcher_warns_that_others_read_the_data(
    tmp_path: Path,
) -> None:
    """`--data-dir /tmp` (the README's example of a foreign folder): chmod'ed 0700, it lost its sticky bit and
    every other account's access to its own files in it."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "someone-elses.txt").write_text("not the stack's")
    said = taken(shared)
    assert mode(shared) == 0o1777
    assert len(said) == 1
    assert f"the data in {shared} is readable by others (mode 1777" in said[0]


def test_a_group_shared_folder_of_another_account_keeps_its_mode_and_the_launcher_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A team's folder whose owner is someone else: only its owner may chmod it, so the launcher failed (EPERM)
    where it had run before. It holds only the stack's files, so ownership alone decides here."""
    team = tmp_path / "team"
    team.mkdir()
    (team / "nats").mkdir()
    (team / "users.db").write_bytes(b"")
    team.chmod(0o2770)
    owner = team.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)  # this process as another member of the team
    said = taken(team)
    assert mode(team) == 0o2770
    assert len(said) == 1
    assert "readable by others (mode 2770" in said[0]


def test_a_folder_the_launcher_makes_or_holding_only_the_stacks_data_is_made_private_without_a_warning(
    tmp_path: Path,
) -> None:
    made = tmp_path / "new" / "data"
    assert taken(made) == []
    assert mode(made) == 0o700
    # One made by an earlier launcher under the usual umask (022), holding only what a stack writes.
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "nats").mkdir()
    (earlier / "orders.db").write_bytes(b"")
    (earlier / "stack.json").write_text("{}")
    earlier.chmod(0o755)
    assert taken(earlier) == []
    assert mode(earlier) == 0o700


def test_a_foreign_folder_only_its_owner_reads_is_left_as_it_is_without_a_warning(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    mine.chmod(0o711)
    assert taken(mine) == []
    assert mode(mine) == 0o711


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most accounts have (022), under which a folder made without a mode of its own is 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("usual_umask")
def test_a_folder_made_for_the_edges_configuration_is_private_like_the_meshs(tmp_path: Path) -> None:
    """The edge's configuration names its admin socket: the folder its writer made for it was 0755, where the
    mesh's sidecars' writer made theirs 0700. They share one writer now."""
    api = HttpApi(
        host="127.0.0.1",
        port=8,
        admin_socket=tmp_path / "http-api-admin.sock",
        gateway="127.0.0.1:9",
        descriptor=descriptor_set(),
    )
    config = write_bootstrap(bootstrap(api), tmp_path / "new" / "http-api.json")
    assert mode(config.parent) == 0o700


@pytest.mark.usefixtures("usual_umask")
def test_writing_the_edges_configuration_leaves_a_foreign_data_directorys_mode_as_its_owner_set_it(
    tmp_path: Path,
) -> None:
    """The edge's configuration is in the data directory itself, whose mode is make_data_dir's to decide: the
    shared writer makes a folder private only when it makes it (the mesh's chmod'ed an existing one, which here
    would take a user's folder private, or /tmp as root)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    mine.chmod(0o711)
    stack = Stack(mine, ports=PortPlan.free(["gateway"], http=True), services=["gateway"])
    try:
        stack.write_http_api()
    finally:
        stack.remove_sockets()
    assert mode(mine) == 0o711
