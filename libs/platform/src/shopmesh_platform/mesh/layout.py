"""Where the local mesh keeps its files in a data directory: the launcher (stack.py), which makes them, and the
tools that find a running stack's sidecars by them (`mesh.faults`, `mesh.split`, `make clean`) name them here
alone, without importing the launcher."""

from __future__ import annotations

from pathlib import Path

# The data directory's folder of the mesh: the authority, the SVIDs, the sidecars' configurations.
MESH = "mesh"
# In the mesh's folder: a symlink to the folder of the services' Unix sockets (`<service>.sock`, behind their
# sidecars). The sockets themselves are not in the data directory: a Unix socket's path is at most
# UNIX_SOCKET_PATH_MAX_BYTES, which `<data dir>/mesh/sockets/notifications.sock` passes in a deep checkout (or
# a test's tmp_path). They are in a short private folder made per start (stack.Stack._make_sockets_folder); the
# link keeps the path people type, `.data/mesh/sockets/<service>.sock`, working from the repository (relative,
# it is short).
SOCKETS_FOLDER = "sockets"


def mesh_dir(data_dir: Path) -> Path:
    """The mesh's folder of the data directory `data_dir`."""
    return data_dir / MESH


def sockets_link(data_dir: Path) -> Path:
    """The data directory's link to the sockets' folder of the stack running on it, `<data dir>/mesh/sockets`."""
    return mesh_dir(data_dir) / SOCKETS_FOLDER


# A service's sidecar's process name (`orders-sidecar`): its configuration's and admin socket's file names.
SIDECAR_SUFFIX = "-sidecar"


def sidecar_name(service: str) -> str:
    """The process name of `service`'s sidecar."""
    return f"{service}{SIDECAR_SUFFIX}"
