"""k8s/'s generators share one main: it writes their files, or with --check writes nothing and names each file
that is missing or stale, exit 1 (what `make lint` runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopmesh_platform.generated_files import write_or_check


def generator(root: Path, argv: list[str]) -> int:
    files = {root / "out" / "a.json": "{}\n", root / "out" / "b.bin": b"\x00\xff"}
    return write_or_check(
        argv, "Write a and b.", lambda: files, root=root, source="what gen.py writes", remedy="make gen"
    )


def test_it_writes_every_file_and_prints_each_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generator(tmp_path, []) == 0
    assert (tmp_path / "out" / "a.json").read_text() == "{}\n"
    assert (tmp_path / "out" / "b.bin").read_bytes() == b"\x00\xff"
    assert capsys.readouterr().out == "out/a.json\nout/b.bin\n"
    assert generator(tmp_path, ["--check"]) == 0
    assert capsys.readouterr() == ("", "")


def test_the_check_writes_nothing_and_names_each_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.json").write_text("{ }\n")
    assert generator(tmp_path, ["--check"]) == 1
    assert capsys.readouterr().err == (
        "error: out/a.json differs from what gen.py writes: run `make gen`\n"
        "error: out/b.bin is missing: run `make gen`\n"
    )
    assert (tmp_path / "out" / "a.json").read_text() == "{ }\n"
    assert not (tmp_path / "out" / "b.bin").exists()
