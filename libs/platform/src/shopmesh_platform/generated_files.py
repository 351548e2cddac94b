"""The main of k8s/'s generators (caller_methods.py, dashboards.py, dockerfiles.py, http_api.py,
storefront_countries.py, values_schema.py): write the files they generate, or, with --check (`make lint`), exit 1
naming each one that is missing or stale.

It lives here because those scripts already import the platform (its topology) from the checkout they run in;
it imports nothing but the standard library, so that dockerfiles.py still runs on a bare `python3`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# A file's contents: text is written as UTF-8, whatever the locale, so that a check reads back what was written.
Contents = str | bytes


def stale(files: Mapping[Path, Contents], root: Path, source: str) -> list[str]:
    """One line per file of `files` that does not hold its contents: `<path> is missing`, or `<path> differs
    from <source>` (what writes it), paths relative to `root`."""
    found = []
    for path, contents in files.items():
        if not path.is_file():
            found.append(f"{path.relative_to(root)} is missing")
        elif path.read_bytes() != _bytes(contents):
            found.append(f"{path.relative_to(root)} differs from {source}")
    return found


def write_or_check(
    argv: Sequence[str] | None,
    doc: str | None,
    files: Callable[[], Mapping[Path, Contents]],
    *,
    root: Path,
    source: str,
    remedy: str,
) -> int:
    """A generator's main: `files` (path → contents) written, each path printed; with --check, nothing written,
    and each stale file said on stderr, with `remedy` (the make target that writes them)."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    args = parser.parse_args(argv)
    if args.check:
        found = stale(files(), root, source)
        for problem in found:
            print(f"error: {problem}: run `{remedy}`", file=sys.stderr)
        return 1 if found else 0
    for path, contents in files().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_bytes(contents))
        print(path.relative_to(root))
    return 0


def _bytes(contents: Contents) -> bytes:
    return contents.encode() if isinstance(contents, str) else contents
