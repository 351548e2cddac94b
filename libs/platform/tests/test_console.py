"""The launcher's writer (`shopmesh_platform.console`): once nobody reads its stdout, lines are dropped, and the
process still exits as it would have, without an error of its own or the interpreter's at exit."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from shopmesh_platform import console
console.say("first")
sys.stdin.readline()  # until the reader has gone
console.say("to nobody")
console.say("to nobody either")
# A write of another writer (a child's prefixed line, a plain print) left in the stream's buffer: the
# interpreter's flush at exit must not fail on it (that is exit status 120 and a message on stderr).
sys.stdout.write("unflushed")
sys.exit(0 if console.stdout.gone else 3)
"""


def test_lines_to_a_reader_that_went_away_are_dropped_and_the_exit_status_kept() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline() == b"first\n"
    process.stdout.close()
    process.stdin.write(b"go on\n")
    process.stdin.close()
    errors = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, errors
    assert errors == ""
