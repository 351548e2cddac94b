"""Write (or check) tests/k8s/release_objects.yaml: the objects each chart x value set renders, by Helm's identity.

    .venv/bin/python k8s/release_objects.py          write it
    .venv/bin/python k8s/release_objects.py --check  exit 1 if the committed file differs from what this writes

`helm upgrade` deletes every object of the deployed release that the new chart no longer renders, after it has
created and updated the others; Helm tells objects apart by API group, kind, namespace and name (not by the API
version). An object renamed is so deleted and created again: a Service, a NetworkPolicy or a mesh policy gone
or not yet there for part of the upgrade, and `helm rollback` goes through the same again. tests/k8s/
test_upgrade.py fails when an object of the committed inventory is no longer rendered; objects added are
harmless, and the file is refreshed by running this. Hooks (the `helm test` pods) are left out: they are no
part of the release's objects, and each run deletes and creates them anyway.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render

from shopmesh_platform.generated_files import write_or_check

INVENTORY = render.ROOT / "tests" / "k8s" / "release_objects.yaml"

# The umbrella with a canary, which renders objects no value set has (the canary's Deployment and Services).
CANARY_VALUES: dict[str, Any] = {
    "global": {"mesh": "istio", "database": {"mode": "postgres"}, "canary": {"catalog": {"enabled": True}}}
}

# Written at the top of the inventory. A change that removes or renames an object adds its line here, with
# the upgrade step it needs in docs/kubernetes.md ("Upgrades and rollbacks").
HISTORY = """\
Objects an upgrade deletes because a later chart no longer renders them (see docs/kubernetes.md, "Upgrades
and rollbacks", for the step each needs):
- 2026-12-04 (ee4cba97, the mesh policy per gRPC method), under Linkerd: <service>-callers AuthorizationPolicy
  and MeshTLSAuthentication, replaced by an HTTPRoute, AuthorizationPolicy and MeshTLSAuthentication
  <service>-rpc-<method> per method."""

Inventory = dict[str, dict[str, list[str]]]


def identity(doc: Mapping[str, Any]) -> str:
    """`Kind.group/name` (`Deployment.apps/catalog`), `Kind/name` for the core group, and ` -n <namespace>`
    for one outside the release's: what Helm matches an object of the deployed release with one of the new
    render by."""
    group = doc["apiVersion"].rpartition("/")[0]
    kind = f"{doc['kind']}.{group}" if group else doc["kind"]
    namespace = doc["metadata"].get("namespace", render.NAMESPACE)
    return f"{kind}/{doc['metadata']['name']}" + ("" if namespace == render.NAMESPACE else f" -n {namespace}")


def is_hook(doc: Mapping[str, Any]) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def inventory(renderings: Mapping[str, Iterable[Mapping[str, Any]]]) -> Inventory:
    """`<value set>/<chart>` -> its objects, as value set -> identity -> the charts that render it, sorted."""
    found: dict[str, dict[str, set[str]]] = {}
    for where, docs in renderings.items():
        value_set, _, chart = where.partition("/")
        objects = found.setdefault(value_set, {})
        for doc in docs:
            if not is_hook(doc):
                objects.setdefault(identity(doc), set()).add(chart)
    return {
        value_set: {key: sorted(charts) for key, charts in sorted(objects.items())}
        for value_set, objects in sorted(found.items())
    }


def gone(committed: Inventory, now: Inventory) -> list[str]:
    """`<value set> <chart>: <identity>` for each object of `committed` that a chart no longer renders."""
    missing: list[str] = []
    for value_set, objects in committed.items():
        for key, charts in objects.items():
            rendering = now.get(value_set, {}).get(key, [])
            missing.extend(f"{value_set} {chart}: {key}" for chart in charts if chart not in rendering)
    return missing


def text(objects: Inventory) -> str:
    """The inventory as YAML, one object a line (its scalars JSON-quoted: `on` or `1.0` stay strings)."""
    lines = [f"# {line}".rstrip() for line in ["Written by k8s/release_objects.py.", "", *HISTORY.splitlines()]]
    for value_set, entries in objects.items():
        lines.append(f"{json.dumps(value_set)}:")
        lines.extend(f"  {json.dumps(key)}: {json.dumps(charts)}" for key, charts in entries.items())
    return "\n".join(lines) + "\n"


def load(path: Path = INVENTORY) -> Inventory:
    loaded: Inventory = yaml.safe_load(path.read_text())
    return loaded


def renderings(
    helm_dir: Path, rendered: Mapping[tuple[str, str], list[dict[str, Any]]] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """`<value set>/<chart>` -> its objects: every chart with every value set, and `canary/shopmesh`;
    `rendered` ((value set, chart) -> its objects, as tests/k8s renders them once for all its tests), if
    given, in place of rendering each pair again."""

    def docs(chart: str, value_set: str, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        texts = render.render(helm_dir, chart, value_set, values=values).values()
        return [doc for manifest in texts for doc in render.documents(manifest)]

    result = {
        f"{value_set}/{chart}": docs(chart, value_set) if rendered is None else rendered[value_set, chart]
        for value_set in render.VALUE_SETS
        for chart in render.all_charts()
    }
    result[f"canary/{render.UMBRELLA}"] = docs(render.UMBRELLA, "custom", CANARY_VALUES)
    return result


def _files() -> dict[Path, str]:
    with render.prepared_copy() as helm_dir:
        return {INVENTORY: text(inventory(renderings(helm_dir)))}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(
        argv,
        __doc__,
        _files,
        root=render.ROOT,
        source="what k8s/release_objects.py writes",
        remedy="make release-objects",
    )


if __name__ == "__main__":
    sys.exit(main())
