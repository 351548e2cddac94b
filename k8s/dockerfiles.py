"""Write (or check) services/<name>/Dockerfile from k8s/docker/Dockerfile.template.

    .venv/bin/python k8s/dockerfiles.py          write the Dockerfile of every topology service that exists
    .venv/bin/python k8s/dockerfiles.py --check  exit 1 if one is missing or differs from the template

Every service image is built the same way, so the Dockerfiles are one template. Only services whose
directory already holds a pyproject.toml get one: a services/<name>/ directory without it would break
the uv workspace (members = services/*) for everyone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "k8s" / "docker" / "Dockerfile.template"

sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
from shopmesh_platform.topology import SERVICES  # noqa: E402


def existing() -> list[str]:
    return [name for name in SERVICES if (ROOT / "services" / name / "pyproject.toml").is_file()]


def dockerfile(name: str) -> str:
    return TEMPLATE.read_text().replace("@SERVICE@", name)


def problems() -> list[str]:
    found = []
    for name in existing():
        path = ROOT / "services" / name / "Dockerfile"
        if not path.is_file():
            found.append(f"{path.relative_to(ROOT)} is missing")
        elif path.read_text() != dockerfile(name):
            found.append(f"{path.relative_to(ROOT)} differs from {TEMPLATE.relative_to(ROOT)}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.check:
        for problem in problems():
            print(f"error: {problem}: run `make dockerfiles`", file=sys.stderr)
        return 1 if problems() else 0
    for name in existing():
        (ROOT / "services" / name / "Dockerfile").write_text(dockerfile(name))
        print(f"services/{name}/Dockerfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
