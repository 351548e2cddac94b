"""`helm upgrade` over a release of an earlier shopmesh, and `helm rollback` to it (docs/kubernetes.md, "Upgrades
and rollbacks"): what works on `helm install` and can still break there. No cluster here: the charts are
rendered and the scripts run against stand-ins for helm and kubectl."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from shopmesh_platform.topology import SERVICES

from .k8skit import (
    ROOT,
    STAGING_MESH_VALUES,
    Docs,
    find,
    objects_of,
    peers_by_port,
    release_objects,
    render,
    run_deploy_staging,
)
from .test_scheduling import deploy_staging_values

DOCS_KUBERNETES = ROOT / "docs" / "kubernetes.md"

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
    values = deploy_staging_values(
        tmp_path, STAGING_VALUES=f"{STAGING_MESH_VALUES} {own} {monitoring.relative_to(ROOT)}"
    )
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
    result, capture = run_deploy_staging(
        tmp_path,
        helm='#!/bin/sh\necho helm "$@" >> "$CAPTURE"\n',
        kubectl='#!/bin/sh\necho kubectl "$@" >> "$CAPTURE"\n',
        STAGING_VALUES="helm/shopmesh/values-monitoring.yaml staging-clustr.yaml",
    )
    assert result.returncode == 1
    assert "STAGING_VALUES names staging-clustr.yaml, which is not a file" in result.stderr
    assert not capture.exists(), "helm ran"


def deploy_staging_with_a_secret_missing(
    tmp_path: Path, missing: str, own_values: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run deploy-staging.sh with `own_values` as STAGING_VALUES against a stand-in helm and a kubectl that
    finds every Secret but `missing`: the script's result, and each kubectl call's arguments."""
    own = tmp_path / "staging-cluster.yaml"
    own.write_text(yaml.safe_dump(own_values))
    result, capture = run_deploy_staging(
        tmp_path,
        helm='#!/bin/sh\necho helm "$@" >> "$CAPTURE.helm"\n',
        # kubectl get secret <name> --ignore-not-found --output name: prints it, but for the one not there.
        kubectl=(
            f'#!/bin/sh\necho "$@" >> "$CAPTURE.kubectl"\n'
            f'case " $* " in *" {missing} "*) ;; *) echo secret/found ;; esac\n'
        ),
        STAGING_VALUES=f"{STAGING_MESH_VALUES} {own}",
    )
    assert not Path(f"{capture}.helm").exists(), ("helm ran", result.stderr)
    return result, [line.split() for line in Path(f"{capture}.kubectl").read_text().splitlines()]


def test_make_deploy_staging_stops_before_helm_when_a_secret_the_pods_read_is_missing(tmp_path: Path) -> None:
    """A release may read a Secret the deployed one did not (orders' and payments' <service>-idempotency since
    2026-12-01; global.nats.existingSecret once set): its pods could not mount it and waited in
    ContainerCreating until `helm upgrade --wait` gave up after 10 minutes, the reason only in their events.
    deploy-staging.sh asks for every Secret the rendered pods read, with the same values files, and stops
    naming the missing ones before Helm runs."""
    own = {"global": {"nats": {"existingSecret": "nats-credentials"}}}
    result, calls = deploy_staging_with_a_secret_missing(tmp_path, "orders-idempotency", own)
    assert result.returncode == 1, result.stderr
    assert "namespace shopmesh does not have: orders-idempotency\n" in result.stderr
    asked = {args[args.index("secret") + 1] for args in calls}
    expected = {f"{name}-database" for name, service in SERVICES.items() if service.has_database}
    assert asked == expected | {"orders-idempotency", "payments-idempotency", "nats-credentials"}


def test_make_deploy_staging_stops_before_helm_when_the_image_pull_secret_is_missing(tmp_path: Path) -> None:
    """A private registry's credentials (global.imagePullSecrets) are a Secret the pods need as much: without it
    every new pod waits in ImagePullBackOff until `helm upgrade --wait` gives up after 10 minutes. The check
    asks for it too, in the cluster and namespace the release goes to (kubectl --context, --namespace)."""
    own = {"global": {"imagePullSecrets": ["regcred"]}}
    result, calls = deploy_staging_with_a_secret_missing(tmp_path, "regcred", own)
    assert result.returncode == 1, result.stderr
    assert "namespace shopmesh does not have: regcred\n" in result.stderr
    assert calls
    for args in calls:
        assert args[args.index("--context") + 1] == "staging", args
        assert args[args.index("--namespace") + 1] == "shopmesh", args


# --- what an upgrade may not change ----------------------------------------------------------------------

# Every Deployment's selector, the same since the charts' first release (2026-11-25): Kubernetes refuses a
# changed selector ("field is immutable"), so a label added here fails every `helm upgrade` of a release
# made before it, and `helm rollback` to one. A canary's adds its track (its pods only).
SELECTOR = {"app.kubernetes.io/name": "{name}", "app.kubernetes.io/part-of": "shopmesh"}
CANARY_SELECTOR = {**SELECTOR, "shopmesh.io/track": "canary"}
# Kinds with fields Kubernetes refuses to change on update, none of which the charts render: one would need
# its immutable fields held to what every earlier release rendered, and a guard of its own here.
IMMUTABLE = {
    "StatefulSet": "selector, volumeClaimTemplates, serviceName, podManagementPolicy",
    "DaemonSet": "selector",
    "ReplicaSet": "selector",
    "Job": "selector and template: a changed Job fails the upgrade unless a hook deletes it first",
    "PersistentVolumeClaim": "spec, but for the storage request",
    "PersistentVolume": "spec.persistentVolumeSource",
    "RoleBinding": "roleRef",
    "ClusterRoleBinding": "roleRef",
}


def test_no_object_of_an_earlier_release_is_renamed_or_removed(
    rendered: dict[tuple[str, str], Docs], helm_dir: Path
) -> None:
    """`helm upgrade` deletes what the deployed release has and the new chart no longer renders, after creating
    the rest: a Service, NetworkPolicy or mesh policy renamed is gone, or not there yet, for part of the upgrade
    (and of a rollback). tests/k8s/release_objects.yaml holds every object each chart x value set rendered when
    it was last written (k8s/release_objects.py); each must still be rendered. Objects added are fine."""
    committed = release_objects.load()
    assert committed, "tests/k8s/release_objects.yaml is empty"
    missing = release_objects.gone(committed, release_objects.inventory(release_objects.renderings(helm_dir, rendered)))
    assert not missing, (
        f"{len(missing)} object(s) of tests/k8s/release_objects.yaml no longer rendered, which `helm upgrade` "
        "would delete from a release made before this change (a renamed one: deleted and created again):\n  "
        + "\n  ".join(missing[:20])
        + ("\n  ..." if len(missing) > 20 else "")
        + '\nIf that is intended, say what an upgrade needs in docs/kubernetes.md ("Upgrades and rollbacks"), '
        "add a line to HISTORY in k8s/release_objects.py and rewrite the inventory: "
        ".venv/bin/python k8s/release_objects.py (make release-objects)"
    )


def test_every_deployment_selects_by_the_fixed_documented_labels(
    rendered: dict[tuple[str, str], Docs], helm_dir: Path
) -> None:
    """A Deployment's selector is immutable: a label added to it (the release's instance, a version) would fail
    every upgrade of an earlier release with "field is immutable". The set is fixed here and in
    docs/kubernetes.md ("Upgrades and rollbacks"); change neither without a way over it for existing releases."""
    canaries = 0
    for where, docs in release_objects.renderings(helm_dir, rendered).items():
        for deployment in (d for d in docs if d["kind"] == "Deployment"):
            name = deployment["metadata"]["name"]
            selector = deployment["spec"]["selector"]
            service = name.removesuffix("-canary")
            fixed = CANARY_SELECTOR if name.endswith("-canary") else SELECTOR
            canaries += name.endswith("-canary")
            assert selector == {"matchLabels": {k: v.format(name=service) for k, v in fixed.items()}}, (where, name)
    assert canaries, "no canary rendered: its selector is not covered"
    docs = DOCS_KUBERNETES.read_text()
    for label in CANARY_SELECTOR:
        assert f"`{label}`" in docs, f"docs/kubernetes.md does not name the selector label {label}"


def test_nothing_rendered_has_fields_an_upgrade_could_not_change(
    rendered: dict[tuple[str, str], Docs], helm_dir: Path
) -> None:
    """Beyond the Deployments' selectors (above), no object has a field Kubernetes refuses to change: no kind of
    IMMUTABLE, no ConfigMap or Secret marked immutable (its next change would fail the upgrade), no Service
    with an address or a type of its own (clusterIP is the API's to assign and cannot change)."""
    for where, docs in release_objects.renderings(helm_dir, rendered).items():
        for doc in docs:
            kind, name = doc["kind"], doc["metadata"]["name"]
            assert kind not in IMMUTABLE, f"{where}: {kind}/{name} has immutable fields ({IMMUTABLE.get(kind)})"
            assert "immutable" not in doc, f"{where}: {kind}/{name}"
            if kind == "Service":
                spec = doc["spec"]
                assert spec["type"] == "ClusterIP", (where, name)
                assert not {"clusterIP", "clusterIPs", "ipFamilies"} & set(spec), (where, name)


def test_hooks_are_helm_tests_that_a_second_run_replaces(rendered: dict[tuple[str, str], Docs]) -> None:
    """Only `helm test` hooks (no install, upgrade or rollback hook that could fail or block one), each deleted
    before it is created again: the next `helm test` (after `make deploy-staging`'s upgrade, or a rollback)
    would otherwise fail with "already exists" on the pods, their ServiceAccounts and NetworkPolicies left by
    the last run (a failed run leaves all three)."""
    hooks = 0
    for (value_set, chart), docs in rendered.items():
        for doc in docs:
            annotations = doc["metadata"].get("annotations") or {}
            if "helm.sh/hook" not in annotations:
                continue
            hooks += 1
            where = (value_set, chart, doc["kind"], doc["metadata"]["name"])
            assert annotations["helm.sh/hook"] == "test", where
            policies = annotations.get("helm.sh/hook-delete-policy", "before-hook-creation").split(",")
            assert "before-hook-creation" in policies, where
    assert hooks, "no hook rendered"


def test_an_upgrade_restarts_the_pods_of_a_changed_configuration_and_no_others(helm_dir: Path) -> None:
    """Every ConfigMap a pod reads has a checksum annotation, which changes with it (the pods roll and read the
    new settings) and with nothing else: rendering the same values again gives the same manifests byte for byte
    (no random or time value, which would restart every pod on every `helm upgrade`), and a setting of one
    service restarts none of the others."""
    staging = render.values_for("staging+istio", helm_dir)
    first, again = (render.render(helm_dir, "shopmesh", "staging+istio") for _ in range(2))
    assert first == again
    before = objects_of(helm_dir, "shopmesh", staging)
    after = objects_of(helm_dir, "shopmesh", render.merged_values(staging, {"catalog": {"logLevel": "DEBUG"}}))
    for name in SERVICES:
        pods = [find(docs, "Deployment", name)["spec"]["template"] for docs in (before, after)]
        spec = pods[0]["spec"]
        read = {ref["configMapRef"]["name"] for c in spec["containers"] for ref in c.get("envFrom", [])}
        read |= {volume["configMap"]["name"] for volume in spec["volumes"] if "configMap" in volume}
        sums = [{k: v for k, v in pod["metadata"]["annotations"].items() if k.startswith("checksum/")} for pod in pods]
        assert len(sums[0]) == len(read), (name, read, sums[0])
        changed = [find(docs, "ConfigMap", name)["data"] for docs in (before, after)]
        assert (sums[0] != sums[1]) == (name == "catalog") == (changed[0] != changed[1]), name


def commands(text: str) -> list[str]:
    """The lines of `text`, each joined with the lines a trailing backslash continues it on (in a comment too:
    a YAML file's `#   helm upgrade ... \\` goes on at the next `#` line)."""
    joined: list[str] = []
    continued = False
    for line in text.splitlines():
        part = line.strip()
        if continued:
            joined[-1] = joined[-1][:-1].rstrip() + " " + part.lstrip("#").strip()
        else:
            joined.append(part)
        continued = joined[-1].endswith("\\")
    return joined


def documented_upgrades() -> list[tuple[Path, str]]:
    """Every `helm upgrade` the repository documents (README, docs, k8s/, skaffold.yaml, the value sets' comments),
    as written, its continuation lines (after a trailing backslash) joined to it: the documented upgrades are
    mostly several lines long, and a flag on any of them is the command's. Each with its file."""
    files = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "k8s").rglob("*.yaml")),
        *sorted((ROOT / "k8s").rglob("*.sh")),
        *sorted((ROOT / "helm").rglob("values*.yaml")),
        ROOT / "k8s" / "k8s.mk",
        ROOT / "skaffold.yaml",
    ]
    upgrades = [(path.relative_to(ROOT), command) for path in files for command in commands(path.read_text())]
    upgrades = [(path, command) for path, command in upgrades if "helm upgrade" in command]
    assert len(upgrades) >= 4, upgrades
    return upgrades


def test_no_documented_upgrade_reuses_the_earlier_charts_defaults() -> None:
    """`helm upgrade --reuse-values` renders the new chart with the defaults of the chart the release was made
    with: over a release from before 2026-12-03 (global.drain's grace period 30 s, which the drain has since
    outgrown) the chart refuses it. docs/mesh.md (faults) and k8s/ingress/gateway.yaml told users to upgrade so;
    every documented upgrade keeps the new chart's defaults."""
    assert [(path, line) for path, line in documented_upgrades() if "--reuse-values" in line] == []


def test_no_documented_upgrade_reuses_the_stored_copy_of_the_values_files() -> None:
    """A release made from values files (`make deploy-staging`) stores their contents: `--reset-then-reuse-values`
    after an update of main reuses that commit's values-staging.yaml instead of this checkout's, loudly where
    a check catches it (the database connection budget) and silently otherwise. The canary steps
    (docs/kubernetes.md), the faults (docs/mesh.md) and k8s/ingress/gateway.yaml upgraded so; every documented
    upgrade gives this checkout's files (the canary's and the faults' settings in a file of STAGING_VALUES),
    and the docs say when --reset-then-reuse-values is safe."""
    assert [(path, line) for path, line in documented_upgrades() if "--reset-then-reuse-values" in line] == []
    values = " ".join(DOCS_KUBERNETES.read_text().split())
    assert "`--reset-then-reuse-values` is safe only when the stored values came from the same commit" in values


def _infra_selector(name: str) -> dict[str, Any]:
    return {"matchLabels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shopmesh"}}


def _claim(size: str) -> list[dict[str, Any]]:
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    return [{"metadata": {"name": "data"}, "spec": spec}]


# k8s/infra's fields that `kubectl apply -k k8s/infra` over a cluster of an earlier `make kind-up` (docs: "a cluster
# made by an earlier make kind-up has no Jaeger") cannot change, as every commit has had them.
INFRA_FIXED = {
    ("StatefulSet", "nats"): {
        "selector": _infra_selector("nats"),
        "serviceName": "nats",
        "podManagementPolicy": None,
        "volumeClaimTemplates": _claim("1Gi"),
    },
    ("StatefulSet", "postgresql"): {
        "selector": _infra_selector("postgresql"),
        "serviceName": "postgresql",
        "podManagementPolicy": None,
        "volumeClaimTemplates": _claim("2Gi"),
    },
    ("Deployment", "jaeger"): {"selector": _infra_selector("jaeger")},
    ("Deployment", "mailpit"): {"selector": _infra_selector("mailpit")},
    ("Deployment", "nats-box"): {"selector": _infra_selector("nats-box")},
}


def test_the_dev_infrastructure_applies_over_an_earlier_one() -> None:
    """`kubectl apply -k k8s/infra` over an existing kind cluster is refused ("field is immutable", "spec:
    Forbidden: updates to statefulset spec for fields other than ...") if a StatefulSet's selector, service name,
    pod management policy or volume claims, or a Deployment's selector, changed; nothing else there may have
    fields an update cannot change."""
    seen = set()
    for text in render.infra_manifests().values():
        for doc in render.documents(text):
            kind, name = doc["kind"], doc["metadata"]["name"]
            if (kind, name) in INFRA_FIXED:
                seen.add((kind, name))
                fixed = INFRA_FIXED[kind, name]
                assert {key: doc["spec"].get(key) for key in fixed} == fixed, (kind, name)
            else:
                assert kind not in {*IMMUTABLE, "Deployment"}, f"k8s/infra: {kind}/{name} is not held here"
                assert "immutable" not in doc, (kind, name)
    assert seen == set(INFRA_FIXED)


# The API server refuses a ConfigMap whose keys and values come to more than 1 MiB (as a Secret's).
CONFIGMAP_LIMIT = 1024 * 1024


def test_every_configmap_fits_what_the_api_server_takes(rendered: dict[tuple[str, str], Docs]) -> None:
    """The gateway's http-api ConfigMap carries the edge's two Envoy configurations, the descriptor set, the
    OpenAPI document and the storefront, and grows with the API: past 1 MiB the upgrade that brings it is
    refused (and so is an install). Its size now: under half of it."""
    largest = 0
    for (value_set, chart), docs in rendered.items():
        for doc in (d for d in docs if d["kind"] == "ConfigMap"):
            size = sum(len(key) + len(value.encode()) for key, value in (doc.get("data") or {}).items())
            binary = (doc.get("binaryData") or {}).items()
            size += sum(len(key) + len(base64.b64decode(value)) for key, value in binary)
            assert size <= CONFIGMAP_LIMIT, (value_set, chart, doc["metadata"]["name"], size)
            largest = max(largest, size)
    assert largest > CONFIGMAP_LIMIT // 4, "the http-api ConfigMap is not among them"
    # docs/kubernetes.md ("Sizes") tells how much room is left: its figure must stay near the truth.
    stated = re.search(r"and the storefront\) is about (\d+) KiB", DOCS_KUBERNETES.read_text())
    assert stated, "docs/kubernetes.md no longer states the http-api ConfigMap's size"
    assert abs(int(stated[1]) * 1024 - largest) <= largest / 10, (int(stated[1]), largest // 1024)


def run_skaffold_dev(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run k8s/scripts/skaffold-dev.sh (`make skaffold-dev`) against stand-ins for the tools it calls, with a kind
    cluster "shopmesh" already there: its result, and every call of kubectl and skaffold in order."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls"
    record = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS"\n'
    for tool in ("docker", "helm", "kubectl", "skaffold"):
        (stubs / tool).write_text(record)
    (stubs / "kind").write_text('#!/bin/sh\n[ "$2" = clusters ] && echo shopmesh\nexit 0\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "CALLS": str(calls), "KIND_CLUSTER": "shopmesh"}
    script = ROOT / "k8s" / "scripts" / "skaffold-dev.sh"
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60, check=False)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_make_skaffold_dev_brings_an_earlier_kind_clusters_infrastructure_up_to_date_first(tmp_path: Path) -> None:
    """k8s/infra grows (PostgreSQL's max_connections=300, which the staging value set's connection budget counts
    on; nats-box, which the runbooks exec into), and only `make kind-up` applied it: a kind cluster made before
    kept the old PostgreSQL (100 connections) under every later `make skaffold-dev`, whose releases then ran out
    of connections or found no nats-box. skaffold-dev.sh applies the namespaces and k8s/infra of this checkout,
    and waits for them, before skaffold deploys."""
    result, calls = run_skaffold_dev(tmp_path)
    assert result.returncode == 0, result.stderr
    context = "--context kind-shopmesh"
    applied = [i for i, call in enumerate(calls) if call == f"kubectl {context} apply -k k8s/infra"]
    namespaces = [i for i, call in enumerate(calls) if call == f"kubectl {context} apply -f k8s/namespaces.yaml"]
    waited = [i for i, call in enumerate(calls) if call.startswith(f"kubectl {context} -n shopmesh-infra rollout")]
    deployed = [i for i, call in enumerate(calls) if call.startswith("skaffold dev --kube-context kind-shopmesh ")]
    assert all((applied, namespaces, waited, deployed)), calls
    assert namespaces[0] < applied[0] < min(waited) <= max(waited) < deployed[0], calls
    # Each workload k8s/infra runs is waited for, nats-box among them (the runbooks exec into it at once).
    workloads = {
        f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        for text in render.infra_manifests().values()
        for doc in render.documents(text)
        if doc["kind"] in ("Deployment", "StatefulSet")
    }
    assert "deployment/nats-box" in workloads
    assert {calls[i].split()[7] for i in waited} == workloads, calls


# A skaffold command as the docs write it, with its profiles: `skaffold run -p staging,istio ...`.
SKAFFOLD_WITH_PROFILES = re.compile(r"\bskaffold (?:run|dev|deploy)\b[^`]*?(?:-p|--profile)[ =]?(\S+)[^`]*")


def test_the_skaffold_staging_profile_is_offered_for_kind_only() -> None:
    """skaffold's staging profile gives values-staging.yaml and the mesh's file, none of the cluster's own: the
    docs offered `skaffold run -p staging,istio --kube-context <context>` beside `make deploy-staging`, and each
    such run put k8s/infra's database, NATS, SMTP and collector peers back (the NetworkPolicies then admit only
    k8s/infra's PostgreSQL: every connection to the database dropped), without the missing-Secrets check or
    `helm test`. skaffold cannot be made to refuse a run that lacks the cluster's files (an unset variable in
    valuesFiles is an empty path, found by helm after the images are pushed), so every documented skaffold
    command with the staging profile targets kind, and the docs say that staging is deployed by deploy-staging."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "skaffold.yaml", ROOT / "k8s" / "k8s.mk"]
    files += sorted((ROOT / "k8s").rglob("*.sh"))
    staging = []
    for path in files:
        for line in commands(path.read_text()):
            for match in SKAFFOLD_WITH_PROFILES.finditer(line):
                if "staging" in match[1].split(","):
                    staging.append((path.relative_to(ROOT), match[0]))
    assert staging, "no documented skaffold command with the staging profile: the check reads nothing"
    assert [(path, command) for path, command in staging if "--kube-context kind-" not in command] == []
    docs = " ".join(DOCS_KUBERNETES.read_text().split())
    assert "`make deploy-staging` is the one way to deploy a staging cluster" in docs
