"""The lock on `make run`'s fixed ports that README walkthroughs hold (tests/conftest.py `local_ports_held`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("walkthrough_conftest", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module  # as importlib's recipe does: dataclasses look their module up there
spec.loader.exec_module(module)
with module.local_ports_held():
    print("held")
"""


def test_the_local_ports_lock_is_taken_though_another_user_created_its_file(tmp_path: Path) -> None:
    """On a shared /tmp the lock file is the first user's (mode 0644): another user's walkthrough must still wait
    for the lock and run, not fail opening the file for writing, which flock does not need."""
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    lock = shared / "shopmesh-local-ports.lock"
    lock.touch()
    lock.chmod(0o444)  # not writable by this user, as another user's 0644 file is not
    # Root may write any file: without the capabilities that let it, it meets the permissions any other user does.
    unprivileged = (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
        if os.geteuid() == 0
        else []
    )
    run = subprocess.run(
        [*unprivileged, sys.executable, "-c", HOLD, str(ROOT / "tests" / "conftest.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(shared)},
    )
    assert run.stdout.strip() == "held", run.stdout + run.stderr
