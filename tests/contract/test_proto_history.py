"""No committed change to protos/ broke the contracts: for every commit that touched protos/, `buf breaking`
(the FILE rules of its parent's protos/buf.yaml) finds nothing between its protos/ and its parent's, and the
commit left those rules as they were or changed them as a reviewed change (breaking_config.py's REVIEWED): a
commit's own buf.yaml never judges it, or a retyped field with `except: [FIELD_SAME_TYPE]` beside it passes.

`make breaking` compares the working tree with the branch main, which catches a breaking change before it is
committed, on a branch; once it is on main, main compared with itself is clean. This walks the history
instead, so a breaking change is caught after it is committed too, wherever it was committed. Each distinct
protos/ tree is compiled once into a buf image (`buf build -o`), and each commit's image is compared with its
parent's, a few at a time.

The walk starts after VERIFIED_THROUGH: every commit up to it, all 61 that touched protos/, was verified once
(no breaking change) by this same check over the whole history. Walking it all takes about 15 s of CPU (123
buf runs; 35 s on a 2-core machine at load 13) and grows with every proto change, too much for `make test`;
`SHOPMESH_PROTO_HISTORY=all` walks it all again. VERIFIED_THROUGH not being in HEAD's history (history
rewritten) fails, as does a shallow clone (never a skip), naming how to deepen it. The last tests hold the
check to breaking changes it must find, committed in a clone, and to the shallow clone's failure.

Alone: `.venv/bin/pytest tests/contract/test_proto_history.py`."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from .breaking_config import REVIEWED, Reviewed, breaking_config, unreviewed_change

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "node_modules"
# A bound on one git or buf run, against a hang only (a build or comparison takes about a second).
RUN_BOUND_SECONDS = 60
# The last commit that touched protos/ when the whole history was verified (catalog.proto's seed, 2026-12-05).
VERIFIED_THROUGH = "c218e232c640e112e0af8f896c5726ecbef5dc25"
T = TypeVar("T")
R = TypeVar("R")


def buf_binary(tools: Path = TOOLS) -> Path:
    """The Makefile's buf (`BUF`). npm installs the binary of this platform only beside its Node launcher,
    `.bin/buf`, which costs a Node start per call: the binary itself when it is there, else the launcher."""
    native = sorted(tools.glob("@bufbuild/buf-*/bin/buf"))
    if len(native) == 1:
        return native[0]
    launcher = tools / ".bin" / "buf"
    if not launcher.is_file():
        pytest.fail(f"buf is missing ({launcher}): run `make setup`; without it no proto change is checked")
    return launcher


def git(repo: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_BOUND_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}", pytrace=False)
    return done.stdout


@dataclass(frozen=True)
class Change:
    """A commit's protos/ (its tree id) and its parent's."""

    commit: str
    tree: str | None
    parent_tree: str


def walked_from() -> str | None:
    """Where the walk starts: after VERIFIED_THROUGH, or at the first commit for `SHOPMESH_PROTO_HISTORY=all`."""
    return None if os.environ.get("SHOPMESH_PROTO_HISTORY") == "all" else VERIFIED_THROUGH


def proto_changes(repo: Path, since: str | None) -> list[Change]:
    """Every (commit, parent) of HEAD's history after `since` (all of it: None) where protos/ differs,
    protos/ being in the parent."""
    if git(repo, "rev-parse", "--is-shallow-repository").strip() != "false":
        pytest.fail(
            f"{repo} is a shallow clone: the commits that changed protos/ before its cut are unknown, so a "
            "breaking change among them would pass. Deepen it: `git fetch --unshallow` (in CI, check out "
            "with the whole history, e.g. actions/checkout's `fetch-depth: 0`)",
            pytrace=False,
        )
    if (
        since is not None
        and subprocess.run(
            ["git", "-C", str(repo), "merge-base", "--is-ancestor", since, "HEAD"],
            timeout=RUN_BOUND_SECONDS,
            check=False,
        ).returncode
    ):
        pytest.fail(
            f"{since}, the commit through which protos/ were verified, is not in HEAD's history (was it "
            "rewritten?): verify all of it, `SHOPMESH_PROTO_HISTORY=all pytest tests/contract/test_proto_history.py`, "
            "then set VERIFIED_THROUGH to its last commit that touched protos/",
            pytrace=False,
        )
    walked = f"{since}..HEAD" if since is not None else "HEAD"
    pairs = [
        (commit, parent)
        for line in git(repo, "log", "--format=%H %P", walked, "--", "protos").splitlines()
        for commit, *parents in [line.split()]
        for parent in parents
    ]
    # One git for every tree id: `<commit>:protos` answers "<id> tree <size>", or "... missing".
    asked = sorted({rev for pair in pairs for rev in pair})
    answers = git(repo, "cat-file", "--batch-check", stdin="".join(f"{rev}:protos\n" for rev in asked))
    trees = {
        rev: fields[0] if fields[1] == "tree" else None
        for rev, fields in zip(asked, (line.split() for line in answers.splitlines()), strict=True)
    }
    changes = []
    for commit, parent in pairs:
        parent_tree = trees[parent]
        # No protos/ before: the commit created them, and there is nothing for them to break.
        if parent_tree is not None and trees[commit] != parent_tree:
            changes.append(Change(commit, trees[commit], parent_tree))
    return changes


def in_parallel(work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    # A buf run mostly waits to be scheduled on a busy machine, and uses a fraction of a core when it is.
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(work, items))


def run_buf(buf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], capture_output=True, text=True, timeout=RUN_BOUND_SECONDS, check=False, cwd=ROOT
    )


def build_images(repo: Path, buf: Path, trees: Iterable[str], into: Path) -> None:
    """Each protos/ tree, extracted into `into/<tree>/` and compiled into `into/<tree>.binpb`."""

    def build(tree: str) -> None:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", tree],
            capture_output=True,
            timeout=RUN_BOUND_SECONDS,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into / tree, filter="data")
        built = run_buf(buf, "build", str(into / tree), "-o", str(into / f"{tree}.binpb"))
        if built.returncode != 0:
            pytest.fail(f"buf build of protos/ tree {tree} failed:\n{built.stderr}", pytrace=False)

    in_parallel(build, trees)


def breaking_findings(buf: Path, change: Change, images: Path, reviewed: tuple[Reviewed, ...] = REVIEWED) -> str:
    """What `change` breaks, judged by its parent's protos/buf.yaml (FILE rules), and a change it makes to those
    rules unless reviewed; "" when nothing."""
    if change.tree is None:
        return "protos/ removed"
    config = images / change.parent_tree / "buf.yaml"
    changed = images / change.tree / "buf.yaml"
    refused = unreviewed_change(
        config.read_text() if config.is_file() else None, changed.read_text() if changed.is_file() else None, reviewed
    )
    compared = run_buf(
        buf,
        "breaking",
        str(images / f"{change.tree}.binpb"),
        "--against",
        str(images / f"{change.parent_tree}.binpb"),
        *(["--config", str(config)] if config.is_file() else []),
    )
    found = [refused] if refused else []
    if compared.returncode != 0:
        found.insert(0, (compared.stdout + compared.stderr).strip() or f"buf breaking exited {compared.returncode}")
    return "\n".join(found)


def breaking_changes(
    repo: Path, buf: Path, images: Path, since: str | None, reviewed: tuple[Reviewed, ...] = REVIEWED
) -> dict[str, str]:
    """Each commit of HEAD's history after `since` whose protos/ change breaks its parent's, with buf's findings."""
    changes = proto_changes(repo, since)
    build_images(repo, buf, {tree for c in changes for tree in (c.tree, c.parent_tree) if tree is not None}, images)
    findings = in_parallel(lambda change: breaking_findings(buf, change, images, reviewed), changes)
    return {
        git(repo, "log", "-1", "--format=%h %s", change.commit).strip()[:100]: found
        for change, found in zip(changes, findings, strict=True)
        if found
    }


def test_no_commit_changed_protos_in_a_way_that_breaks_the_previous_commits(tmp_path: Path) -> None:
    broken = breaking_changes(ROOT, buf_binary(), tmp_path, walked_from())
    assert not broken, "commits whose protos/ change breaks the contracts (buf breaking, FILE rules):\n" + "\n".join(
        f"{commit}\n{found}" for commit, found in broken.items()
    )


def commit_in_clone(tmp_path: Path, message: str, edits: dict[str, tuple[str, str]]) -> Path:
    """A clone of the repository with one more commit, which replaces `old` by `new` once in each protos/ file
    `edits` names (`{path under protos/: (old, new)}`). No files are checked out but those."""
    clone = tmp_path / "clone"
    git(ROOT, "clone", "--quiet", "--shared", "--no-checkout", str(ROOT), str(clone))
    git(clone, "reset", "--quiet")  # the index of HEAD, for a commit of the files edited; no files checked out
    for path, (old, new) in edits.items():
        git(clone, "checkout", "HEAD", "--", f"protos/{path}")
        edited = clone / "protos" / path
        text = edited.read_text()
        assert old in text, f"protos/{path} no longer holds {old!r}: update the test"
        edited.write_text(text.replace(old, new, 1))
        git(clone, "add", str(edited))
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t.example", "commit", "--quiet", "-m", message)
    return clone


# Each builds a clone's images commit by commit with buf: 20-60 s on a busy 2-core machine (measured), too near
# pytest's 120 s default.
CLONE_TIMEOUT = pytest.mark.timeout(300)

EXP_MONTH_RETYPED = ("int32 exp_month = 2;", "string exp_month = 2;")
EXP_MONTH_RETYPED_FOUND = 'Field "2" with name "exp_month" on message "PaymentCard" changed type'


@CLONE_TIMEOUT
def test_a_committed_breaking_change_is_found_naming_its_commit(tmp_path: Path) -> None:
    """The check above in a clone of the repository with one more commit, which changes a field's type."""
    clone = commit_in_clone(tmp_path, "exp_month a string", {"shopmesh/payments/v1/payments.proto": EXP_MONTH_RETYPED})

    broken = breaking_changes(clone, buf_binary(), tmp_path / "images", VERIFIED_THROUGH)
    [(commit, found)] = broken.items()
    assert commit.endswith(" exp_month a string"), broken
    assert EXP_MONTH_RETYPED_FOUND in found, found


@CLONE_TIMEOUT
def test_a_breaking_change_that_loosens_buf_yaml_in_the_same_commit_is_found(tmp_path: Path) -> None:
    """The commit is judged by its parent's rules, not the ones it brings, and the loosening is refused too."""
    clone = commit_in_clone(
        tmp_path,
        "exp_month a string, FIELD_SAME_TYPE excepted",
        {
            "shopmesh/payments/v1/payments.proto": EXP_MONTH_RETYPED,
            "buf.yaml": ("  except: [", "  except: [FIELD_SAME_TYPE, "),
        },
    )

    broken = breaking_changes(clone, buf_binary(), tmp_path / "images", VERIFIED_THROUGH)
    [(commit, found)] = broken.items()
    assert commit.endswith(" exp_month a string, FIELD_SAME_TYPE excepted"), broken
    assert EXP_MONTH_RETYPED_FOUND in found, found
    assert "changes the breaking rules of protos/buf.yaml" in found, found


EXP_MONTH = "shopmesh/payments/v1/payments.proto"
ORDER_STATES = "shopmesh/orders/v1/orders.proto"


@CLONE_TIMEOUT
def test_a_field_and_an_enum_value_deleted_with_their_numbers_and_names_reserved_are_no_break(tmp_path: Path) -> None:
    """As docs/contracts.md says, a field dropped later is reserved: its number and name never come back."""
    clone = commit_in_clone(
        tmp_path,
        "exp_month and PENDING retired",
        {
            EXP_MONTH: ("int32 exp_month = 2;", 'reserved 2;\n  reserved "exp_month";'),
            ORDER_STATES: ("ORDER_STATE_PENDING = 1;", 'reserved 1;\n  reserved "ORDER_STATE_PENDING";'),
        },
    )

    assert not breaking_changes(clone, buf_binary(), tmp_path / "images", VERIFIED_THROUGH)


@CLONE_TIMEOUT
def test_a_field_or_an_enum_value_deleted_without_reserving_its_number_and_name_is_found(tmp_path: Path) -> None:
    clone = commit_in_clone(
        tmp_path,
        "exp_month and PENDING dropped, half reserved",
        {
            EXP_MONTH: ("int32 exp_month = 2;", "reserved 2;"),
            ORDER_STATES: ("ORDER_STATE_PENDING = 1;", 'reserved "ORDER_STATE_PENDING";'),
        },
    )

    [found] = breaking_changes(clone, buf_binary(), tmp_path / "images", VERIFIED_THROUGH).values()
    assert 'field "2" with name "exp_month" on message "PaymentCard" was deleted without reserving the name' in found
    assert 'enum value "1" on enum "OrderState" was deleted without reserving the number' in found, found


LOOSENED = ("  except: [", "  except: [MESSAGE_NO_DELETE, ")


@CLONE_TIMEOUT
def test_a_change_to_the_breaking_rules_passes_only_once_reviewed(tmp_path: Path) -> None:
    clone = commit_in_clone(tmp_path, "messages may go", {"buf.yaml": LOOSENED})
    before = (ROOT / "protos" / "buf.yaml").read_text()
    this_change = Reviewed(
        before=breaking_config(before), after=breaking_config(before.replace(*LOOSENED)), why="the test's"
    )

    [found] = breaking_changes(clone, buf_binary(), tmp_path / "refused", VERIFIED_THROUGH).values()
    assert "changes the breaking rules of protos/buf.yaml" in found, found
    assert "REVIEWED in tests/contract/breaking_config.py" in found, found
    assert not breaking_changes(clone, buf_binary(), tmp_path / "reviewed", VERIFIED_THROUGH, (*REVIEWED, this_change))


def test_a_change_to_buf_yaml_lint_section_alone_is_no_change_to_the_breaking_rules() -> None:
    before = (ROOT / "protos" / "buf.yaml").read_text()
    assert "use: [STANDARD, COMMENTS]" in before, "the lint rules this test edits were reworded: edit the test"
    assert not unreviewed_change(before, before.replace("use: [STANDARD, COMMENTS]", "use: [STANDARD]", 1))
    assert not unreviewed_change(before, before + "# a comment\n")


def test_a_shallow_clone_fails_naming_how_to_deepen_it(tmp_path: Path) -> None:
    clone = tmp_path / "shallow"
    git(ROOT, "clone", "--quiet", "--no-checkout", "--depth", "1", f"file://{ROOT}", str(clone))
    with pytest.raises(pytest.fail.Exception, match="git fetch --unshallow"):
        proto_changes(clone, VERIFIED_THROUGH)


def test_a_verified_commit_outside_the_history_fails_naming_how_to_verify_it_all(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="SHOPMESH_PROTO_HISTORY=all"):
        proto_changes(ROOT, git(ROOT, "commit-tree", "-m", "elsewhere", "HEAD^{tree}").strip())
