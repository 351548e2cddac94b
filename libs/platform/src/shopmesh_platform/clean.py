"""`make clean`'s first step: remove what `make run MESH=envoy` keeps outside the data directory.

The Makefile then deletes the data directory itself (`rm -rf .data`).

    python -m shopmesh_platform.clean [--data-dir .data]

That is the services' sockets' folder (`$XDG_RUNTIME_DIR/shopmesh-sockets-*` or `/tmp/shopmesh-sockets-*`,
`stack.SOCKETS_PREFIX`), which a launcher killed with -9 leaves behind its link `<data dir>/mesh/sockets`:
deleting the data directory removed the link and left the folder for good. It is removed only when it is such
a folder of this user's and no launcher holds its lock (`stack.remove_left_sockets_folder`). Exit status 0
done (or nothing to do), 3 a launcher still uses the data directory (any launcher, with the mesh or without:
it holds the data directory's lock, `stack.hold_data_dir`, or its sockets' folder's): nothing is removed, and
`make clean` stops there rather than delete the data under it; 2 a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .mesh.layout import sockets_link
from .stack import DataDirHeld, SocketsFolderHeld, hold_folder, remove_left_sockets_folder

# Told apart from a failure to run at all (a broken virtualenv), after which `make clean` still deletes.
HELD = 3


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="python -m shopmesh_platform.clean", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(".data"), help="the data directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        held = hold_folder(args.data_dir)
    except OSError:  # no data directory (or not one): no launcher uses it
        held = None
    else:
        if held is None:
            print(
                f"error: {DataDirHeld(args.data_dir, 'stop it (Ctrl-C in its terminal), then make clean again')}",
                file=err,
            )
            return HELD
    try:
        return _remove_left_sockets_folder(args.data_dir, out, err)
    finally:
        # Held meanwhile: no launcher starts on the data directory while its sockets' folder goes.
        if held is not None:
            os.close(held)


def _remove_left_sockets_folder(data_dir: Path, out: TextIO, err: TextIO) -> int:
    link = sockets_link(data_dir)
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
        print(f"removed {removed} (the services' sockets of {data_dir}, left by a launcher that is gone)", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
