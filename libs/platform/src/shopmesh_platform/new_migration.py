"""`make migration SERVICE=<service> SLUG=<slug>`: a service's next Alembic revision, chained to its head.

    python -m shopmesh_platform.new_migration [--summary "<one line>"] [--root .] [--] <service> <slug>

Writes `services/<service>/src/shopmesh_<service>/migrations/versions/<service>_NNNN_<slug>.py` through Alembic's
own `revision` command (the chassis' script.py.mako), its id `<service>_NNNN` the branch's next number and its
down_revision the branch's head, and moves the branch's row of docs/operations.md's heads table ("Rolling back:
how far") to it: the names and the table that tests/test_migration_summaries.py and
tests/docs/test_rollback_floor_doc.py hold the revisions to. Exit status 0 written, 2 refused (one line on
stderr: an unknown service, one without a database, a bad slug, a slug the service already used, a summary
that is not one line or holds a backslash or triple quotes or ends in '"', a branch with more than one head, a
heads table without the branch's current head), and then nothing is written.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from shopmesh_chassis.migrations import alembic_config, branch_of

from .topology import SERVICES

REFUSED = 2
# A module name's words: the file is imported by Alembic, and its name is read as `<branch>_NNNN_<slug>`.
_SLUG = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
_SLUG_MAX = 40
_OPERATIONS_DOC = Path("docs") / "operations.md"
_HEADS_SECTION = "## Rolling back: how far"
_HEADS_HEADER = "| Database branch | Head on main |"
# One row of it: `| catalog | catalog_0003 |`.
_HEAD_ROW = re.compile(r"^\|[ \t]*(?P<branch>[^|\s][^|\n]*?)[ \t]*\|[ \t]*(?P<head>[^|\s]+)[ \t]*\|$", re.MULTILINE)


class Refused(Exception):
    """What the command refuses, said in one line."""


@dataclass(frozen=True)
class NewRevision:
    path: Path
    revision: str
    down_revision: str


def versions_dir(root: Path, service: str) -> Path:
    return root / "services" / service / "src" / f"shopmesh_{service}" / "migrations" / "versions"


def create(root: Path, service: str, slug: str, summary: str | None = None) -> NewRevision:
    """Write `service`'s next revision under `root` (a checkout) and move its head in docs/operations.md."""
    versions = _checked_versions(root, service)
    _check_slug(versions, service, slug)
    summary = _checked_summary(summary if summary is not None else slug.replace("_", " ").capitalize() + ".")
    config = alembic_config(versions)
    # `%%` is ConfigParser's '%': Alembic then fills in %(rev)s. The slug is the file's, not one cut from the summary.
    config.set_main_option("file_template", f"%%(rev)s_{slug}")
    config.set_main_option("timezone", "UTC")
    # No "Generating <path> ... done" of Alembic's own: main() says the path once, with what to do next. Set
    # before the first ScriptDirectory, which keeps the config's messaging options.
    config.cmd_opts = argparse.Namespace(quiet=True)
    head = _branch_head(ScriptDirectory.from_config(config), service)
    revision = f"{service}_{int(head.rpartition('_')[2]) + 1:04d}"
    doc = root / _OPERATIONS_DOC
    # Worked out before anything is written: a table that cannot take the new head leaves no revision behind.
    moved = _with_head_moved(doc, service, head, revision)
    command.revision(config, message=summary, head=f"{service}@head", rev_id=revision, version_path=str(versions))
    doc.write_text(moved)
    return NewRevision(versions / f"{revision}_{slug}.py", revision, head)


def _checked_versions(root: Path, service: str) -> Path:
    if not service:
        raise Refused("no service given: make migration SERVICE=<service> SLUG=<slug>")
    if service not in SERVICES:
        raise Refused(f"unknown service {service!r}: one of {', '.join(sorted(SERVICES))}")
    if not SERVICES[service].has_database:
        raise Refused(f"{service} owns no database, so it has no migrations")
    versions = versions_dir(root, service)
    if not versions.is_dir():
        raise Refused(f"{service}'s migrations are not at {versions} (give the checkout with --root)")
    return versions


def _check_slug(versions: Path, service: str, slug: str) -> None:
    if not _SLUG.fullmatch(slug) or len(slug) > _SLUG_MAX:
        raise Refused(
            f"bad slug {slug!r}: lowercase words (a-z, 0-9) joined by '_', at most {_SLUG_MAX} characters, as add_brand"
        )
    used = sorted(path.name for path in versions.glob(f"{service}_[0-9][0-9][0-9][0-9]_{slug}.py"))
    if used:
        raise Refused(f"{service} already has a revision named {slug}: {used[0]}; pick another slug")


def _checked_summary(summary: str) -> str:
    # Alembic logs it at every start that runs the revision, as one line (tests/test_migration_summaries.py).
    summary = summary.strip()
    # Written into the docstring as typed: a backslash would escape, and a '"' at its end close it early.
    # splitlines: any line break Python reads in a file (\r, U+2028, ...), not only \n.
    if len(summary.splitlines()) != 1 or '"""' in summary or "\\" in summary or summary.endswith('"'):
        raise Refused("the summary must be one line of text, without backslashes or triple quotes, not ending in '\"'")
    return summary


def _branch_head(scripts: ScriptDirectory, service: str) -> str:
    heads = [head for head in scripts.get_heads() if branch_of(head) == service]
    if len(heads) != 1:
        raise Refused(f"{service}'s migrations have {len(heads)} heads ({', '.join(sorted(heads))}), not one")
    return heads[0]


def documented_heads(root: Path) -> dict[str, str]:
    """docs/operations.md's heads table under `root`: each branch's head, as the doc names it (a branch cell's
    first word: `chassis (in every service's database)` is chassis's row)."""
    return {_branch_of_row(row): row["head"] for row in _head_rows((root / _OPERATIONS_DOC).read_text())}


def _head_rows(text: str) -> list[re.Match[str]]:
    """The rows of the heads table, its header and separator rows left out, each with its `branch` and `head`
    cells; the table ends at the first blank line. Within the table only: a line of the same shape further down
    the doc is not a branch's row."""
    start = text.find(_HEADS_SECTION)
    table = text.find(_HEADS_HEADER, start) if start >= 0 else -1
    if table < 0:
        return []
    # The newline that ends the separator row: the first row starts after it.
    rows = text.find("\n", text.find("\n", table) + 1)
    end = text.find("\n\n", table)
    if rows < 0 or (end >= 0 and rows >= end):
        return []
    return list(_HEAD_ROW.finditer(text, rows, end if end >= 0 else len(text)))


def _branch_of_row(row: re.Match[str]) -> str:
    return row["branch"].split()[0]


def _with_head_moved(doc: Path, branch: str, head: str, revision: str) -> str:
    text = doc.read_text()
    found = next((row for row in _head_rows(text) if _branch_of_row(row) == branch and row["head"] == head), None)
    if found is None:
        raise Refused(
            f"{_OPERATIONS_DOC} has no row '| {branch} | {head} |' in its table '{_HEADS_HEADER}': fix it "
            "(tests/docs/test_rollback_floor_doc.py), then run this again"
        )
    return text[: found.start("head")] + revision + text[found.end("head") :]


def _next_steps(new: NewRevision, root: Path, service: str) -> str:
    path = new.path.relative_to(root) if new.path.is_relative_to(root) else new.path
    return f"""\
created {path} ({new.revision}, after {new.down_revision})
updated {_OPERATIONS_DOC}: {service}'s head on main is {new.revision} (the table of "Rolling back: how far")
next:
  1. write upgrade() and downgrade() with alembic.op (each raises NotImplementedError until then), and the
     docstring: its first line is the summary Alembic logs, then why the change is expand-only
     (docs/chassis.md, "Migrations are expand-only")
  2. declare the same change in services/{service}/src/shopmesh_{service}/store/tables.py
  3. a contracting change (it drops what the release before reads; docs/chassis.md, "Writing a contracting
     change") also goes into the first table of docs/operations.md, "Rolling back: how far"
  4. .venv/bin/pytest tests/test_migration_summaries.py tests/docs/test_rollback_floor_doc.py \\
       tests/contract/test_migrations_build_the_models.py tests/contract/test_migrations_safe.py
"""


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shopmesh_platform.new_migration", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("service", help="the service whose database changes (catalog, orders, ...)")
    parser.add_argument("slug", help="the file name's end: lowercase words joined by '_' (add_brand)")
    parser.add_argument("--summary", help="the docstring's first line, which Alembic logs (default: from the slug)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the checkout (default: the current directory)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        new = create(root, args.service, args.slug, args.summary)
    except (Refused, CommandError) as refused:  # CommandError: Alembic's own refusal, as one line too
        print(f"error: {refused}", file=err)
        return REFUSED
    out.write(_next_steps(new, root, args.service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
