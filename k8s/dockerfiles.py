"""Write (or check) services/<name>/Dockerfile from k8s/docker/Dockerfile.template, and the load generator's
libs/loadgen/Dockerfile from k8s/docker/Dockerfile.loadgen.template.

    .venv/bin/python k8s/dockerfiles.py          write the Dockerfile of every topology service that exists
    .venv/bin/python k8s/dockerfiles.py --check  exit 1 if one is missing or differs from the template

Every service image is built the same way, so the Dockerfiles are one template. Only services whose
directory already holds a pyproject.toml get one: a services/<name>/ directory without it would break
the uv workspace (members = services/*) for everyone.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "k8s" / "docker" / "Dockerfile.template"
LOADGEN_TEMPLATE = ROOT / "k8s" / "docker" / "Dockerfile.loadgen.template"
LOADGEN_DOCKERFILE = ROOT / "libs" / "loadgen" / "Dockerfile"
SOURCE = "k8s/docker/Dockerfile*.template"

sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
from shopmesh_platform.generated_files import stale, write_or_check  # noqa: E402
from shopmesh_platform.topology import SERVICES  # noqa: E402


def existing() -> list[str]:
    return [name for name in SERVICES if (ROOT / "services" / name / "pyproject.toml").is_file()]


def dockerfile(name: str) -> str:
    return TEMPLATE.read_text().replace("@SERVICE@", name)


def dockerfiles() -> dict[Path, str]:
    services = {ROOT / "services" / name / "Dockerfile": dockerfile(name) for name in existing()}
    return {**services, LOADGEN_DOCKERFILE: LOADGEN_TEMPLATE.read_text()}


def problems() -> list[str]:
    return stale(dockerfiles(), ROOT, SOURCE)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(argv, __doc__, dockerfiles, root=ROOT, source=SOURCE, remedy="make dockerfiles")


if __name__ == "__main__":
    sys.exit(main())
