"""The `migrate` init container: every service that owns a database migrates it there (MIGRATE_ONLY=true, its own
image) before its app container starts, so that no startup probe bounds a migration; given what the app container
is given to reach the database. A service without one has none."""

from __future__ import annotations

from typing import Any

import pytest

from shopmesh_platform.topology import SERVICES

from .k8skit import ROOT, Docs, find, render

# The services with migrations of their own: those whose image migrates (tests/test_migrate_only.py).
WITH_A_DATABASE = sorted(p.parent.name.removeprefix("shopmesh_") for p in ROOT.glob("services/*/src/*/migrations"))


def pod_of(docs: Docs, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


@pytest.fixture(params=["default", "staging+istio", "staging+linkerd"])
def umbrella(rendered: dict[tuple[str, str], Docs], request: pytest.FixtureRequest) -> Docs:
    # The session's one rendering of every chart (conftest.rendered), not a helm template run of its own.
    return rendered[request.param, render.UMBRELLA]


def test_every_service_but_the_gateway_has_migrations() -> None:
    assert sorted(set(SERVICES) - {"gateway"}) == WITH_A_DATABASE


@pytest.mark.parametrize("service", WITH_A_DATABASE)
def test_a_service_with_a_database_migrates_in_an_init_container_as_its_app_container_runs(
    umbrella: Docs, service: str
) -> None:
    pod = pod_of(umbrella, service)
    [app] = [container for container in pod["containers"] if container["name"] == service]
    [migrate] = pod["initContainers"]
    assert migrate["name"] == "migrate"
    assert migrate["image"] == app["image"]
    assert migrate["env"] == [{"name": "MIGRATE_ONLY", "value": "true"}]
    # The same settings, Secrets' files and SQLite folder: the database the app serves from.
    assert migrate["envFrom"] == app["envFrom"]
    assert migrate["volumeMounts"] == app["volumeMounts"]
    # Pod Security `restricted`, and no more of the node than the app container asks for.
    assert migrate["securityContext"] == app["securityContext"]
    assert migrate["resources"] == app["resources"]
    # Nothing bounds a migration but its end: no probe, and no command replacing the image's entrypoint.
    assert not {"command", "args", "startupProbe", "livenessProbe", "readinessProbe"} & migrate.keys()


def test_a_service_without_a_database_has_no_init_container(umbrella: Docs) -> None:
    assert "initContainers" not in pod_of(umbrella, "gateway")
