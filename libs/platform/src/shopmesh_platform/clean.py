"""`make clean`'s first step: remove what `make run MESH=envoy` keeps outside the data directory.

The Makefile then deletes the data directory itself (`rm -rf .data`).

    python -m shopmesh_platform.clean [--data-dir .data]

That is the services' sockets' folder (`$XDG_RUNTIME_DIR/shopmesh-sockets-*` or `/tmp/shopmesh-sockets-*`,
`stack.SOCKETS_PREFIX`), which a launcher killed with -9 leaves behind its link `<data dir>/mesh/sockets`:
deleting the data directory removed the link and left the folder for good. It is removed only when it is such
a folder of this user's and no launcher holds its lock (`stack.remove_left_sockets_folder`). Exit status 0
done (or nothing to do), 3 a launcher still uses the data directory: nothing is removed, and `make clean`
stops there rather than delete the data under it; 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .stack import MESH, SOCKETS_FOLDER, SocketsFolderHeld, remove_left_sockets_folder

# Told apart from a failure to run at all (a broken virtualenv), after which `make clean` still deletes.
HELD = 3


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_platform.clean", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".data"), help="the data directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    link = args.data_dir / MESH / SOCKETS_FOLDER
    try:
        removed = remove_left_sockets_folder(link)
    except SocketsFolderHeld as held:
        print(
            f"error: a launcher still uses {held.link} ({held.folder}, its services' sockets): stop it (Ctrl-C in "
            "its terminal), then make clean again",
            file=err,
        )
        return HELD
    if removed is not None:
        print(
            f"removed {removed} (the services' sockets of {args.data_dir}, left by a launcher that is gone)", file=out
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
