"""The runbooks' `nats` commands have a NATS CLI to run in: k8s/infra's nats-box, beside k8s/infra's NATS,
named NATS by NATS_URL, and let through the namespace's default deny to NATS alone. Nothing else provides
`nats` (it is on no package index make setup reads), so a runbook command that does not run there runs nowhere.
(kubernetes-validate --strict and checkov read it with the rest of k8s/infra: test_render.py.)"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .k8skit import ROOT, render

INFRA_NAMESPACE = "shopmesh-infra"
# How the docs run the CLI (docs/operations.md, "The NATS CLI"): read-only commands as they are, those that ask
# to confirm with -it.
IN_THE_BOX = re.compile(rf"^kubectl -n {INFRA_NAMESPACE} exec (-it )?deploy/nats-box -- nats \S")


def infra() -> list[dict[str, Any]]:
    return [doc for text in render.infra_manifests().values() for doc in render.documents(text)]


def named(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in infra() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def pod_labels(kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = named(kind, name)["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_nats_box_runs_the_cli_against_k8s_infras_nats() -> None:
    box = named("Deployment", "nats-box")
    assert box["metadata"]["namespace"] == INFRA_NAMESPACE
    [container] = box["spec"]["template"]["spec"]["containers"]
    image, _, tag = container["image"].partition(":")
    assert (image, bool(tag) and tag != "latest") == ("natsio/nats-box", True), container["image"]
    nats = named("Service", "nats")
    [client] = [p for p in nats["spec"]["ports"] if p["name"] == "client"]
    url = f"nats://{nats['metadata']['name']}.{nats['metadata']['namespace']}.svc.cluster.local:{client['port']}"
    assert {e["name"]: e.get("value") for e in container["env"]}["NATS_URL"] == url


def test_the_network_policies_let_the_nats_box_reach_nats_and_nothing_else() -> None:
    """The namespace denies everything by default: without a rule of its own the box reaches nothing, NATS'
    own policy admitting only the shopmesh namespace; with one too wide, a shell in it reaches PostgreSQL."""
    policies = [d for d in infra() if d["kind"] == "NetworkPolicy"]
    box, nats = pod_labels("Deployment", "nats-box"), pod_labels("StatefulSet", "nats")
    # Besides the default deny (an empty selector), one policy of its own.
    [own] = [p for p in policies if p["spec"]["podSelector"] and matches(p["spec"]["podSelector"], box)]
    assert own["spec"]["ingress"] == []
    egress = own["spec"]["egress"]
    to_pods = [rule for rule in egress if all("namespaceSelector" not in peer for peer in rule["to"])]
    assert [[matches(peer["podSelector"], nats) for peer in rule["to"]] for rule in to_pods] == [[True]]
    assert to_pods[0]["ports"] == [{"protocol": "TCP", "port": 4222}]
    # The other rule is DNS, kube-dns in kube-system alone.
    [dns] = [rule for rule in egress if rule not in to_pods]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert [peer["namespaceSelector"]["matchLabels"] for peer in dns["to"]] == [
        {"kubernetes.io/metadata.name": "kube-system"}
    ]
    [to_nats] = [p for p in policies if p["metadata"]["name"] == "nats"]
    admitted = [
        rule
        for rule in to_nats["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" not in peer and matches(peer["podSelector"], box)
    ]
    assert [rule["ports"] for rule in admitted] == [[{"protocol": "TCP", "port": 4222}]]


# Each doc that names a `nats` command, and how many it names at least (a rewrite that lost them all, or the
# pattern that finds them, would pass unseen): the runbooks, and the chassis' design, which sends operators to
# the same commands.
DOCS_WITH_NATS_COMMANDS = {"operations.md": 9, "chassis.md": 4}


@pytest.mark.parametrize(("doc", "at_least"), DOCS_WITH_NATS_COMMANDS.items())
def test_every_nats_command_of_the_docs_runs_in_the_nats_box(doc: str, at_least: int) -> None:
    runbook = (ROOT / "docs" / doc).read_text()
    fenced = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
    # The code blocks' lines, and the inline code of the prose, a span's line breaks read as spaces (a command
    # wraps in the Markdown source).
    spans = [line.strip() for block in fenced.findall(runbook) for line in block.splitlines()]
    spans += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", fenced.sub("", runbook))]
    commands = [span for span in spans if re.search(r"(^| -- )nats (stream|consumer|kv|server|account) ", span)]
    assert len(commands) >= at_least, commands
    local = "nats -s nats://127.0.0.1:14222 "  # make run's, said once: a natscli binary on the host
    elsewhere = [c for c in commands if not IN_THE_BOX.match(c) and not c.startswith(local)]
    assert elsewhere == [], elsewhere
    # The deployment those commands name is the one `kubectl apply -k k8s/infra` makes.
    box = named("Deployment", "nats-box")["metadata"]
    assert (box["namespace"], box["name"]) == (INFRA_NAMESPACE, "nats-box")
