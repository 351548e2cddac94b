"""Write (or check) services/<name>/Dockerfile and the load generator's libs/loadgen/Dockerfile from
k8s/docker/Dockerfile.template.

    .venv/bin/python k8s/dockerfiles.py          write the Dockerfile of every topology service that exists
    .venv/bin/python k8s/dockerfiles.py --check  exit 1 if one is missing or differs from the template

Every image is built the same way (a uv builder stage, a runtime stage of the interpreter and the virtualenv,
the same user and labels), so the Dockerfiles are one template; each image fills in only what is its own
(IMAGES: what it copies, its description, environment and entrypoint), every service alike. Only services
whose directory already holds a pyproject.toml get one: a services/<name>/ directory without it would break
the uv workspace (members = services/*) for everyone.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "k8s" / "docker" / "Dockerfile.template"
LOADGEN_DOCKERFILE = ROOT / "libs" / "loadgen" / "Dockerfile"
SOURCE = "k8s/docker/Dockerfile.template"
# The width of the template's section rules (`# --- runtime: ... ---`), which a builder rule is dashed out to.
RULE_WIDTH = 102

sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
from shopmesh_platform.generated_files import stale, write_or_check  # noqa: E402
from shopmesh_platform.topology import SERVICES  # noqa: E402


@dataclass(frozen=True)
class Image:
    """What one image's Dockerfile says of its own, each filling the template's @FIELD@ (upper case); @NAME@
    (the package is shopmesh-<name>) appears in them too."""

    name: str
    about: str  # the header's rest: what it is, its build context and command
    builds: str  # the builder stage's rule
    manifests: str  # the COPY lines of the pyproject.toml files its locked dependencies come from
    installs: str  # the second uv sync's comment
    sources: str  # the COPY lines of the workspace sources it installs
    description: str  # org.opencontainers.image.description
    runtime: str  # why the runtime stage's root filesystem can be read-only, what the environment is for
    environment: str  # the variables of its own in the runtime stage's ENV, after those every image sets
    start: str  # EXPOSE (if any) and the ENTRYPOINT, with why


SERVICE = Image(
    name="@SERVICE@",
    about="""\
Build context: the repository root, so the
# chassis, the contracts and uv.lock come along:
#   docker build -f services/@SERVICE@/Dockerfile -t shopmesh-@SERVICE@ .""",
    builds="the service's locked dependencies",
    manifests="""\
COPY libs/contracts/pyproject.toml libs/contracts/
COPY libs/chassis/pyproject.toml libs/chassis/
COPY services/@SERVICE@/pyproject.toml services/@SERVICE@/""",
    installs="The service and its workspace libraries, as wheels",
    sources="""\
COPY libs/contracts/ libs/contracts/
COPY libs/chassis/ libs/chassis/
COPY services/@SERVICE@/ services/@SERVICE@/""",
    description="shopmesh @SERVICE@ gRPC service",
    runtime="""\
# Read-only root filesystem: bytecode was compiled in the builder; writable paths are mounted volumes
# (/tmp, and /data for SQLite when DATABASE_URL is unset). Container ports: gRPC 50051, metrics 9464.""",
    environment="""\
    GRPC_HOST=0.0.0.0 \\
    GRPC_PORT=50051 \\
    METRICS_HOST=0.0.0.0 \\
    METRICS_PORT=9464 \\
    DATA_DIR=/data""",
    start="""\
EXPOSE 50051 9464
# Exec form: the interpreter is PID 1 and gets SIGTERM itself; the chassis drains on it.
ENTRYPOINT ["/app/.venv/bin/python", "-m", "shopmesh_@SERVICE@"]""",
)

LOADGEN = Image(
    name="loadgen",
    about="""\
Locust's shoppers (libs/loadgen), which the
# loadgenerator chart runs against the gateway's HTTP/JSON port. Build context: the repository root, so uv.lock
# comes along:
#   docker build -f libs/loadgen/Dockerfile -t shopmesh-loadgen .""",
    builds="the package's locked dependencies (Locust)",
    manifests="COPY libs/loadgen/pyproject.toml libs/loadgen/",
    installs="The package itself, as a wheel",
    sources="COPY libs/loadgen/ libs/loadgen/",
    description="shopmesh load generator: Locust shoppers on the HTTP/JSON API",
    runtime="""\
# Read-only root filesystem: bytecode was compiled in the builder; /tmp is a mounted volume. No port: headless
# Locust serves nothing. The chart sets Locust's LOCUST_HOST, LOCUST_USERS, LOCUST_SPAWN_RATE and the shoppers'
# LOCUST_THINK, LOCUST_DECLINED_SHARE, LOCUST_CANCEL_SHARE.""",
    environment="    LOCUST_HEADLESS=true",
    start="""\
# Exec form: the interpreter is PID 1 (it becomes Locust) and gets SIGTERM itself. --wait: a pod started before
# the gateway waits for its edge instead of crash-looping.
ENTRYPOINT ["/app/.venv/bin/python", "-m", "shopmesh_loadgen", "--wait", "600"]""",
)


def fill(image: Image) -> str:
    """The template with `image`'s parts in: every @FIELD@ filled (a slot left over fails), then @NAME@."""
    text = TEMPLATE.read_text()
    if not image.environment.strip():
        # The template's ENV instruction ends in a line continuation: with nothing after it, WORKDIR would be read
        # as part of it.
        raise ValueError(f"{SOURCE}: image {image.name} sets no environment of its own; the ENV line needs one")
    for field in fields(Image):
        if field.name != "name":
            text = text.replace(f"@{field.name.upper()}@", getattr(image, field.name))
    rule_start = text.index("# --- builder: ")
    rule = text[rule_start : text.index(" @RULE@", rule_start)]
    text = text.replace("@RULE@", "-" * max(3, RULE_WIDTH - len(rule) - 1))
    text = text.replace("@NAME@", image.name)
    left = set(re.findall(r"@[A-Z]+@", text)) - {"@SERVICE@"}
    if left:
        raise ValueError(f"{SOURCE}: no part of the image fills {', '.join(sorted(left))}")
    return text


def dockerfile(name: str) -> str:
    return fill(SERVICE).replace("@SERVICE@", name)


def loadgen_dockerfile(image: Image = LOADGEN) -> str:
    text = fill(image)
    if "@SERVICE@" in text:  # the one slot `fill` leaves, for the services' images only
        raise ValueError(f"{SOURCE}: the load generator's image has no service to fill @SERVICE@ with")
    return text


def dockerfiles() -> dict[Path, str]:
    services = {ROOT / "services" / name / "Dockerfile": dockerfile(name) for name in existing()}
    return {**services, LOADGEN_DOCKERFILE: loadgen_dockerfile()}


def existing() -> list[str]:
    return [name for name in SERVICES if (ROOT / "services" / name / "pyproject.toml").is_file()]


def problems() -> list[str]:
    return stale(dockerfiles(), ROOT, SOURCE)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(argv, __doc__, dockerfiles, root=ROOT, source=SOURCE, remedy="make dockerfiles")


if __name__ == "__main__":
    sys.exit(main())
