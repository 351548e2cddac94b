"""The charts under a platform team's values: what its cluster needs of every service's objects (workload
identity on the ServiceAccounts, its mesh's control plane, its admission policies' labels), and the values that
would render but that the API server, or the pods, would refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shopmesh_platform.topology import SERVICES

from .k8skit import Docs, find, objects_of

IRSA = "eks.amazonaws.com/role-arn"


def of_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_service_account_annotations_reach_every_services_account_the_services_own_winning(helm_dir: Path) -> None:
    """IRSA / Workload Identity: the platform's annotation on every service's ServiceAccount, one service's own
    replacing it key by key; the account's name stays the service's (the mesh's identity is built on it)."""
    values = {
        "global": {"serviceAccount": {"annotations": {IRSA: "arn:aws:iam::1:role/shop", "team": "shop"}}},
        "payments": {"serviceAccount": {"annotations": {IRSA: "arn:aws:iam::1:role/payments"}}},
    }
    accounts = of_kind(objects_of(helm_dir, "shopmesh", values), "ServiceAccount")
    for service in SERVICES:
        role = "payments" if service == "payments" else "shop"
        assert accounts[service]["metadata"].get("annotations") == {IRSA: f"arn:aws:iam::1:role/{role}", "team": "shop"}


def test_service_account_annotations_stay_off_the_helm_test_account(helm_dir: Path) -> None:
    """The test pod's identity may call health and nothing else: the service's cloud role is not its."""
    docs = objects_of(helm_dir, "catalog", {"serviceAccount": {"annotations": {IRSA: "arn:aws:iam::1:role/c"}}})
    assert IRSA not in find(docs, "ServiceAccount", "catalog-health-test")["metadata"]["annotations"]
    assert find(docs, "ServiceAccount", "catalog")["metadata"]["annotations"] == {IRSA: "arn:aws:iam::1:role/c"}
