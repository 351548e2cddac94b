"""The charts' values.schema.json (k8s/values_schema.py): Helm refuses a misspelt key or a wrong type, naming
it, in a service chart installed alone and in the umbrella; the committed schemas are what the script writes.
Every value set the repo ships still renders: conftest's render_dir renders them all through the schemas."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from shopmesh_platform.topology import SERVICES

from .k8skit import ROOT, objects_of, render, values_schema


def refusal(helm_dir: Path, chart: str, values: dict[str, Any]) -> str:
    with pytest.raises(helm.errors.HelmValuesError) as refused:
        objects_of(helm_dir, chart, values)
    return str(refused.value)


def test_the_committed_schemas_are_what_the_script_writes() -> None:
    assert values_schema.main(["--check"]) == 0, "run `make values-schema`"


def test_the_check_names_a_stale_or_missing_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helm_copy = tmp_path / "helm"
    shutil.copytree(ROOT / "helm", helm_copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    monkeypatch.setattr(values_schema, "HELM", helm_copy)
    monkeypatch.setattr(values_schema, "ROOT", tmp_path)
    (helm_copy / "orders" / values_schema.SCHEMA).write_text("{}\n")
    (helm_copy / "shopmesh" / values_schema.SCHEMA).unlink()
    assert values_schema.problems() == [
        "helm/orders/values.schema.json differs from what k8s/values_schema.py writes",
        "helm/shopmesh/values.schema.json is missing",
    ]
    assert values_schema.main(["--check"]) == 1


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        # A service's key misspelt: its resources would have been left out.
        ({"resource": {"limits": {"memory": "1Gi"}}}, "- at '': additional properties 'resource' not allowed"),
        ({"autoscalling": {"enabled": True}}, "- at '': additional properties 'autoscalling' not allowed"),
        ({"autoscaling": {"enable": True}}, "- at '/autoscaling': additional properties 'enable' not allowed"),
        ({"resources": {"limit": {"cpu": "2"}}}, "- at '/resources': additional properties 'limit' not allowed"),
        # The environment's too, in a values-<set>.yaml given to a service chart alone.
        ({"global": {"autoscalling": {"enabled": True}}}, "- at '/global': additional properties 'autoscalling'"),
        ({"global": {"imagePullSecrets": [{"secret": "regcred"}]}}, "additional properties 'secret' not allowed"),
    ],
)
def test_a_misspelt_key_is_refused_naming_it(helm_dir: Path, values: dict[str, Any], refused: str) -> None:
    message = refusal(helm_dir, "catalog", values)
    assert message.startswith("values don't meet the specifications of the schema(s)"), message
    assert message.split("\n")[1] == "catalog:", message
    assert refused in message


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ({"replicaCount": "2"}, "- at '/replicaCount': got string, want null or integer"),
        ({"autoscaling": {"enabled": "true"}}, "- at '/autoscaling/enabled': got string, want null or boolean"),
        ({"callers": "gateway"}, "- at '/callers': got string, want null or array"),
        ({"global": {"replicaCount": "2"}}, "- at '/global/replicaCount': got string, want null or integer"),
        ({"global": {"mesh": "istoi"}}, "- at '/global/mesh': value must be one of"),
    ],
)
def test_a_wrong_type_is_refused_naming_the_key(helm_dir: Path, values: dict[str, Any], refused: str) -> None:
    assert refused in refusal(helm_dir, "catalog", values)


@pytest.mark.parametrize("chart", SERVICES)
def test_every_service_chart_has_the_schema(helm_dir: Path, chart: str) -> None:
    assert f"{chart}:\n- at '': additional properties 'replica' not allowed" in refusal(helm_dir, chart, {"replica": 2})


def test_the_umbrella_refuses_a_service_key_at_its_top_level_or_in_global(helm_dir: Path) -> None:
    """A staging file that puts a service's setting beside global: (or in it) instead of under the service."""
    message = refusal(helm_dir, render.UMBRELLA, {"replicaCount": 2, "global": {"resources": {"orders": {}}}})
    assert "shopmesh:\n- at '': additional properties 'replicaCount' not allowed" in message
    message = refusal(helm_dir, render.UMBRELLA, {"global": {"callers": ["gateway"]}})
    assert re.search(r"shopmesh:\n- at '/global': additional properties 'callers' not allowed", message), message


def test_the_umbrella_checks_each_service_with_its_chart_schema(helm_dir: Path) -> None:
    message = refusal(helm_dir, render.UMBRELLA, {"orders": {"replicaCount": "2", "resource": {}}})
    assert (
        "orders:\n- at '/replicaCount': got string, want null or integer\n- at '': additional properties 'resource'"
        in (message)
    )
    assert "catalog:" not in message


def test_a_null_is_taken_as_helm_means_it(helm_dir: Path) -> None:
    """`--set catalog.resources.limits=null` drops the dev sizing's limits (docs/kubernetes.md, Sizing): Helm keeps
    the null where the chart has no default to drop, so every key the schema knows also takes null."""
    values = {"catalog": {"resources": {"limits": None}}, "global": {"resources": {"orders": {"limits": None}}}}
    docs = objects_of(helm_dir, render.UMBRELLA, values)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("catalog", "orders"):
        assert "limits" not in deployments[name]["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_what_the_shipped_values_set_renders(helm_dir: Path) -> None:
    """The umbrella with a disabled service, a canary and the ingress file: keys the schema must keep taking."""
    values = render.values_with_files("istio", [ROOT / "k8s" / "ingress" / "values.yaml"], helm_dir)
    values["global"] |= {"database": {"mode": "postgres"}, "canary": {"catalog": {"enabled": True, "weight": 5}}}
    values["recommendations"] = {"enabled": False}
    assert objects_of(helm_dir, render.UMBRELLA, values)
