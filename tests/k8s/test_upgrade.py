"""`helm upgrade` over a release of an earlier shopmesh, and `helm rollback` to it (docs/kubernetes.md, "Upgrades
and rollbacks"): what works on `helm install` and can still break there. No cluster here: the charts are
rendered and the scripts run against stand-ins for helm and kubectl."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from shopmesh_platform.topology import SERVICES

from .k8skit import ROOT, find, objects_of, peers_by_port
from .test_scheduling import deploy_staging_values

# The staging cluster's own PostgreSQL, outside k8s/infra (values-staging.yaml's peers are k8s/infra's).
CLUSTER_DATABASE = [{"ipBlock": {"cidr": "10.20.0.5/32"}}]


def test_make_deploy_staging_takes_the_clusters_own_values_on_every_upgrade(helm_dir: Path, tmp_path: Path) -> None:
    """Helm reuses none of a release's values once an upgrade gives it a values file, and deploy-staging.sh gives
    values-staging.yaml: a cluster's own settings from an earlier `helm upgrade ... -f` (its PostgreSQL's peers,
    values-monitoring.yaml) were dropped by the next `make deploy-staging`, whose NetworkPolicies then let the
    services reach only k8s/infra's PostgreSQL (every connection to the database dropped, no pod that owns data
    starting) and which deleted the ServiceMonitors. STAGING_VALUES gives them on every deploy, after
    values-staging.yaml so that they win."""
    own = tmp_path / "staging-cluster.yaml"
    own.write_text(yaml.safe_dump({"global": {"database": {"peers": CLUSTER_DATABASE}}}))
    monitoring = ROOT / "helm" / "shopmesh" / "values-monitoring.yaml"
    values = deploy_staging_values(tmp_path, STAGING_VALUES=f"{own} {monitoring.relative_to(ROOT)}")
    docs = objects_of(helm_dir, "shopmesh", values)
    owners = [name for name, service in SERVICES.items() if service.has_database]
    assert owners
    for name in owners:
        egress = find(docs, "NetworkPolicy", name)["spec"]["egress"]
        assert peers_by_port(egress, "to")[5432] == CLUSTER_DATABASE, name
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceMonitor"} == set(SERVICES)


def test_make_deploy_staging_refuses_a_staging_values_file_that_is_not_there(tmp_path: Path) -> None:
    """A misspelt STAGING_VALUES path stops the deploy before helm runs, naming it: deploying without the
    cluster's settings is the failure STAGING_VALUES exists to prevent."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("helm", "kubectl"):
        (stubs / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> "$CAPTURE"\n')
        (stubs / tool).chmod(0o755)
    capture = tmp_path / "calls"
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "CAPTURE": str(capture),
        "STAGING_CONTEXT": "staging",
        "REGISTRY": "registry.example.com/shopmesh",
        "IMAGE_TAG": "1234567",
        "STAGING_VALUES": "helm/shopmesh/values-monitoring.yaml staging-clustr.yaml",
    }
    script = ROOT / "k8s" / "scripts" / "deploy-staging.sh"
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "STAGING_VALUES names staging-clustr.yaml, which is not a file" in result.stderr
    assert not capture.exists(), "helm ran"
