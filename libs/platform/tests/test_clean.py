"""`make clean` removes the local data, and with it what `make run MESH=envoy` keeps outside it: the services'
sockets' folder (`/tmp/shopmesh-sockets-*`) that a launcher killed with -9 left behind, through the data
directory's link; never a folder a running launcher holds, nor one that is not such a folder of this user's.

The tests run the Makefile's own `clean` in a scratch directory (its paths are relative: `.data`, `.tools`,
`.venv` there), with this interpreter's folder as its VENV_BIN.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shopmesh_platform import clean
from shopmesh_platform.stack import SOCKETS_PREFIX

from .run_kit import launched

REPOSITORY = Path(__file__).resolve().parents[3]


def make_clean(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *("make", "--no-print-directory", "-f", str(REPOSITORY / "Makefile"), "-I", str(REPOSITORY)),
            *("-C", str(where), "clean", f"VENV_BIN={Path(sys.executable).parent}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def left() -> Iterator[Path]:
    """A launcher's sockets' folder in /tmp, as `Stack` makes it (mkdtemp, 0700), with a socket's file in it."""
    folder = Path(tempfile.mkdtemp(prefix=SOCKETS_PREFIX, dir="/tmp"))
    (folder / "catalog.sock").touch()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def linked(where: Path, folder: Path) -> Path:
    """`where`'s .data linking to `folder` as a launcher's: `.data/mesh/sockets`."""
    link = where / ".data" / "mesh" / "sockets"
    link.parent.mkdir(parents=True)
    link.symlink_to(folder, target_is_directory=True)
    return link


def test_make_clean_removes_the_sockets_folder_a_killed_launcher_left_outside_the_data_directory(
    tmp_path: Path, left: Path
) -> None:
    """`rm -rf .data` removed the link and left the folder it points to, in /tmp, for good."""
    linked(tmp_path, left)
    done = make_clean(tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".data").exists()
    assert not left.exists(), done.stdout
    assert f"removed {left} (the services' sockets of .data, left by a launcher that is gone)" in done.stdout


def test_make_clean_refuses_while_a_launcher_holds_the_sockets_folder_and_removes_nothing(
    tmp_path: Path, left: Path
) -> None:
    """A launcher that still runs (or still starts) on .data holds its folder's lock: its sockets, and the data
    under it, stay; make clean says to stop it first."""
    link = linked(tmp_path, left)
    held = os.open(left, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = make_clean(tmp_path)
    finally:
        os.close(held)
    assert done.returncode != 0
    assert (left / "catalog.sock").exists()
    assert link.is_symlink()
    assert (
        f"error: a launcher still uses {link.relative_to(tmp_path)} ({left}, its services' sockets): stop it "
        "(Ctrl-C in its terminal), then make clean again"
    ) in done.stderr, done.stderr


@pytest.mark.timeout(300)
async def test_make_clean_refuses_while_a_launcher_without_the_mesh_runs_and_removes_nothing(tmp_path: Path) -> None:
    """Only the MESH=envoy sockets' lock told a running launcher before: `make clean` under a plain `make run`
    got status 0 and went on to `rm -rf .venv .data` under it. The launcher's data directory lock says it now."""
    data = tmp_path / ".data"
    async with launched(data, "--services", "catalog", "--http-port", "0") as (process, _):
        assert (data / "catalog.db").exists()
        done = make_clean(tmp_path)
        assert done.returncode != 0, done.stdout
        assert (
            f"error: a launcher (pid {process.pid}) still uses .data: stop it (Ctrl-C in its terminal), then make "
            "clean again\n"
        ) in done.stderr, done.stderr
        assert {"catalog.db", "nats", "stack.json"} <= {path.name for path in data.iterdir()}


def test_make_clean_leaves_a_linked_folder_that_is_not_a_launchers_sockets_folder(tmp_path: Path) -> None:
    """The link is followed only to a `shopmesh-sockets-*` folder of this user's: anything else it points to
    (a folder of someone's, a link edited by hand) is not the stack's to remove; the link itself goes with .data."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").touch()
    scratch = tmp_path / "checkout"
    scratch.mkdir()
    linked(scratch, elsewhere)
    done = make_clean(scratch)
    assert done.returncode == 0, done.stderr
    assert not (scratch / ".data").exists()
    assert (elsewhere / "keep").exists()


def test_help_describes_the_step_in_a_whole_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows the docstring's first line: it stopped mid-sentence ("... outside the data directory, which
    the")."""
    with pytest.raises(SystemExit) as exited:
        clean.main(["--help"])
    assert exited.value.code == 0
    described = " ".join(capsys.readouterr().out.split()).partition(" options: ")[0]
    assert described.endswith("."), described
