"""`make migration SERVICE=<service> SLUG=<slug>` (shopmesh_platform.new_migration), run on a copy of every service's
migrations and of docs/operations.md: the revision it writes is the branch's next, chained to its head, and passes
the repo's own checks of the revisions (their names and one-line summaries, the heads table of "Rolling back: how
far"); it runs once written, and fails every migration until then; and what it refuses, it refuses in one line,
writing nothing."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from shopmesh_chassis.db import Database
from shopmesh_chassis.migrations import alembic_config, branch_of, migrate
from shopmesh_platform.new_migration import REFUSED, documented_heads, main, versions_dir

from .contract.migration_sql import SERVICE_VERSIONS
from .docs.test_rollback_floor_doc import ROOT, branch_heads
from .test_migration_summaries import misnamed_revisions, multi_line_summaries

WRITTEN_UPGRADE = 'op.add_column("products", sa.Column("brand", sa.String(100), nullable=True))'
WRITTEN_DOWNGRADE = 'op.drop_column("products", "brand")'
WRITTEN_IMPORTS = "from __future__ import annotations\n\nimport sqlalchemy as sa\nfrom alembic import op\n"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What the command reads and writes, copied: every service's revisions and docs/operations.md."""
    for versions in SERVICE_VERSIONS:
        copy = tmp_path / versions.relative_to(ROOT)
        shutil.copytree(versions, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "operations.md", tmp_path / "docs" / "operations.md")
    return tmp_path


@pytest.fixture
def make_checkout(checkout: Path) -> Path:
    """The copy, with what `make migration` itself reads: the Makefile (and the file it includes), and the venv."""
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    (checkout / "k8s").mkdir()
    shutil.copy(ROOT / "k8s" / "k8s.mk", checkout / "k8s" / "k8s.mk")
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    return checkout


def make_migration(root: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    """The real `make migration` in `root`, each variable one argument as a shell hands it over once unquoted.
    `-o setup`: the venv is there already, and setup would install tools into the copy. Without the make
    variables of a `make test` this runs under, whose jobserver and flags are not this make's."""
    env = {name: value for name, value in os.environ.items() if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    argv = ["make", "--no-print-directory", "-o", "setup", "migration", *variables]
    return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


def service_versions(root: Path) -> list[Path]:
    return sorted(root.glob("services/*/src/shopmesh_*/migrations/versions"))


def catalog_head(root: Path) -> str:
    return branch_heads(service_versions(root))["catalog"]


def run(root: Path, service: str, slug: str, *options: str) -> tuple[int, str, str]:
    """As the Makefile calls it: the options, then the service and slug after `--` (a slug may start with '-')."""
    out, err = io.StringIO(), io.StringIO()
    status = main([*options, "--root", str(root), "--", service, slug], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_the_revision_is_the_branchs_next_chained_to_its_head(checkout: Path) -> None:
    head = catalog_head(checkout)
    expected = f"catalog_{int(head.rpartition('_')[2]) + 1:04d}"

    status, out, err = run(checkout, "catalog", "add_brand", "--summary", "Products' brand, shown on their page.")

    assert (status, err) == (0, "")
    path = versions_dir(checkout, "catalog") / f"{expected}_add_brand.py"
    assert f"created {path.relative_to(checkout)} ({expected}, after {head})" in out
    scripts = ScriptDirectory.from_config(alembic_config(versions_dir(checkout, "catalog")))
    new = scripts.get_revision(expected)
    assert new is not None
    assert new.path == str(path)
    assert new.down_revision == head
    assert [h for h in scripts.get_heads() if branch_of(h) == "catalog"] == [expected]
    assert new.doc == "Products' brand, shown on their page."


def test_the_revision_passes_the_repos_checks_of_names_summaries_and_heads(checkout: Path) -> None:
    before = documented_heads(checkout)

    assert run(checkout, "orders", "gift_note")[0] == 0
    assert run(checkout, "catalog", "add_brand")[0] == 0

    every = service_versions(checkout)
    assert misnamed_revisions(every) == set()
    assert multi_line_summaries(every) == set()
    assert documented_heads(checkout) == branch_heads(every)
    # Only the two branches' rows moved.
    assert {b for b, head in documented_heads(checkout).items() if before[b] != head} == {"catalog", "orders"}


async def test_the_skeleton_fails_every_migration_until_it_is_written(checkout: Path) -> None:
    assert run(checkout, "catalog", "add_brand")[0] == 0
    database = Database(f"sqlite:///{checkout}/catalog.db")
    try:
        with pytest.raises(NotImplementedError, match="write upgrade"):
            await migrate(database, versions_dir(checkout, "catalog"))
    finally:
        await database.dispose()


async def test_the_revision_once_written_migrates_the_database_to_it(checkout: Path) -> None:
    status, _, _ = run(checkout, "catalog", "add_brand")
    assert status == 0
    path = next(versions_dir(checkout, "catalog").glob("catalog_*_add_brand.py"))
    skeleton = path.read_text()
    upgrade, downgrade = (line for line in skeleton.splitlines() if "raise NotImplementedError" in line)
    written = skeleton.replace(upgrade, f"    {WRITTEN_UPGRADE}").replace(downgrade, f"    {WRITTEN_DOWNGRADE}")
    path.write_text(written.replace("from __future__ import annotations\n", WRITTEN_IMPORTS))
    database = Database(f"sqlite:///{checkout}/catalog.db")
    try:
        await migrate(database, versions_dir(checkout, "catalog"))
        async with database.read() as session:
            columns = (await session.execute(sa.text("SELECT name FROM pragma_table_info('products')"))).scalars()
            assert "brand" in set(columns)
            versions = set((await session.execute(sa.text("SELECT version_num FROM alembic_version"))).scalars())
    finally:
        await database.dispose()
    assert path.stem.removesuffix("_add_brand") in versions


def test_make_migration_hands_the_summary_over_verbatim(make_checkout: Path) -> None:
    """Dollars (make expands them, `$(value ...)` must not), quotes of both kinds and runs of spaces."""
    summary = 'Price in $cents and $(cents), the "list" one:  it\'s `kept`  as typed.'
    head = catalog_head(make_checkout)

    made = make_migration(make_checkout, "SERVICE=catalog", "SLUG=add_price", f"SUMMARY={summary}")

    assert made.returncode == 0, made.stderr
    [path] = versions_dir(make_checkout, "catalog").glob("catalog_*_add_price.py")
    new = ScriptDirectory.from_config(alembic_config(versions_dir(make_checkout, "catalog"))).get_revision(
        path.stem.removesuffix("_add_price")
    )
    assert new is not None
    assert (new.doc, new.down_revision) == (summary, head)


def test_make_migration_refuses_a_bad_slug_as_typed_and_writes_nothing(make_checkout: Path) -> None:
    before = snapshot(make_checkout)

    made = make_migration(make_checkout, "SERVICE=catalog", "SLUG=add $brand; touch pwned")

    assert made.returncode != 0
    assert "error: bad slug 'add $brand; touch pwned'" in made.stderr, made.stderr
    assert snapshot(make_checkout) == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        pytest.param(["", "add_brand"], "no service given: make migration SERVICE=<service>", id="no-service"),
        pytest.param(["shipping", "add_brand"], "unknown service 'shipping'", id="unknown-service"),
        pytest.param(["gateway", "add_brand"], "gateway owns no database", id="no-database"),
        pytest.param(["catalog", "Add-Brand"], "bad slug 'Add-Brand'", id="punctuation"),
        pytest.param(["catalog", "add__brand"], "bad slug", id="empty-word"),
        pytest.param(["catalog", "_add_brand"], "bad slug", id="leading-underscore"),
        pytest.param(["catalog", "4brand"], "bad slug", id="digit-first"),
        pytest.param(["catalog", "a" * 41], "bad slug", id="too-long"),
        pytest.param(
            ["catalog", "initial"], "catalog already has a revision named initial: catalog_0001_initial.py", id="used"
        ),
        pytest.param(
            ["catalog", "add_brand", "--summary", "Two\nlines."], "the summary must be one line", id="two-lines"
        ),
        # Python reads a \r in a file as a line break: the docstring's first line would end there.
        pytest.param(
            ["catalog", "add_brand", "--summary", "Two\rlines."], "the summary must be one line", id="carriage-return"
        ),
        pytest.param(["catalog", "add_brand", "--summary", 'The "brand"'], "not ending in '\"'", id="closing-quote"),
        pytest.param(["catalog", "-x"], "bad slug '-x'", id="option-like"),
    ],
)
def test_a_refusal_is_one_line_and_writes_nothing(checkout: Path, args: list[str], says: str) -> None:
    before = snapshot(checkout)

    status, out, err = run(checkout, *args)

    assert (status, out) == (REFUSED, "")
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert says in err
    assert snapshot(checkout) == before


def test_a_slug_used_by_the_revision_just_made_is_refused(checkout: Path) -> None:
    assert run(checkout, "catalog", "add_brand")[0] == 0
    before = snapshot(checkout)

    status, _, err = run(checkout, "catalog", "add_brand")

    assert status == REFUSED
    assert "catalog already has a revision named add_brand" in err
    assert snapshot(checkout) == before


def test_a_heads_table_that_does_not_name_the_head_is_refused_before_anything_is_written(checkout: Path) -> None:
    doc = checkout / "docs" / "operations.md"
    head = catalog_head(checkout)
    doc.write_text(doc.read_text().replace(f"| catalog | {head} |", "| catalog | catalog_0001 |"))
    before = snapshot(checkout)

    status, _, err = run(checkout, "catalog", "add_brand")

    assert status == REFUSED
    assert f"has no row '| catalog | {head} |'" in err
    assert snapshot(checkout) == before


def test_a_row_of_the_same_shape_below_the_heads_table_is_not_taken_for_the_branchs(checkout: Path) -> None:
    doc = checkout / "docs" / "operations.md"
    head = catalog_head(checkout)
    doc.write_text(
        doc.read_text().replace(f"| catalog | {head} |", "| catalog | catalog_0001 |") + f"\n| catalog | {head} |\n"
    )
    before = snapshot(checkout)

    status, _, err = run(checkout, "catalog", "add_brand")

    assert status == REFUSED, err
    assert snapshot(checkout) == before
