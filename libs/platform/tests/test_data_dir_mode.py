"""The data directory's mode: the launcher makes a folder of its own private, and leaves anyone else's as its
owner set it, saying in one line when others may read the data it writes there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shopmesh_platform.stack import hold_data_dir


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
