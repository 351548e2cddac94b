"""Render shopmesh's Helm charts offline with the Helm v4 SDK (helm-python-sdk), no helm binary needed.

    .venv/bin/python k8s/render.py render [--out render]   every chart x every value set -> render/<set>/<chart>/
    .venv/bin/python k8s/render.py deps                    `helm dependency update`, in place, in order
    .venv/bin/python k8s/render.py secrets [-f FILE ...]    the Secrets the umbrella's pods read (as helm -f FILE...),
                                                           which no chart creates (deploy-staging.sh checks them)
    .venv/bin/python k8s/render.py istio-tracing [-f FILE ...]
                                                           the mesh config k8s/scripts/mesh-istio.sh installs (the
                                                           sidecars' tracing provider, the default retry policy), from
                                                           the istio value set (each FILE over it, as helm -f)

Charts: the library chart (helm/shopmesh-lib), one chart per topology service (helm/<service>), the load
generator (helm/loadgenerator), the umbrella (helm/shopmesh). Value sets: `default` (the charts' own values)
and one per environment file beside the umbrella chart (helm/shopmesh/values-<set>.yaml), which hold only
`global:` settings and so apply to the umbrella and to each service chart alone. tests/k8s imports this module.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import yaml
from helm_python import _native as helm_native

ROOT = Path(__file__).resolve().parent.parent
HELM = ROOT / "helm"
INFRA = ROOT / "k8s" / "infra"
LIBRARY = "shopmesh-lib"
UMBRELLA = "shopmesh"
LOADGENERATOR = "loadgenerator"
NAMESPACE = "shopmesh"
# A value set is `default` or one or more values files beside the umbrella chart, joined by "+" and given in
# that order (`staging+istio`: -f values-staging.yaml -f values-istio.yaml). Staging renders only behind a mesh.
VALUE_SETS = ("default", "staging+istio", "staging+linkerd", "istio", "linkerd", "monitoring")
MESHES = ("istio", "linkerd")

sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
from shopmesh_platform.mesh.envoy import CONNECT_TIMEOUT  # noqa: E402
from shopmesh_platform.topology import SERVICES  # noqa: E402


def documents(text: str) -> list[Any]:
    """The non-empty YAML documents of `text`, parsed by libyaml when PyYAML has it: the pure-Python parser
    took over a minute of the Kubernetes tests (a minute and more on a loaded machine) to read the renders."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc]


def service_charts() -> list[str]:
    return list(SERVICES)


def all_charts() -> list[str]:
    return [*service_charts(), UMBRELLA]


def tool_charts() -> list[str]:
    """Charts of no service that the umbrella can include (off by default): the load generator."""
    return [LOADGENERATOR]


def rendered_charts() -> list[str]:
    """Every chart a render writes: the services', the tools', the umbrella."""
    return [*service_charts(), *tool_charts(), UMBRELLA]


def layer_names(value_set: str) -> list[str]:
    """The values files' names a value set is made of, in order (`staging+istio`: staging, istio)."""
    return [] if value_set == "default" else value_set.split("+")


def mesh_of(value_set: str) -> str:
    """The mesh a value set renders under ("" for none)."""
    return next((layer for layer in layer_names(value_set) if layer in MESHES), "")


def values_files(value_set: str, helm_dir: Path = HELM) -> list[Path]:
    return [helm_dir / UMBRELLA / f"values-{layer}.yaml" for layer in layer_names(value_set)]


def values_for(value_set: str, helm_dir: Path = HELM) -> dict[str, Any]:
    return merged_values(*(helm.values_from_yaml(path.read_text()) for path in values_files(value_set, helm_dir)))


def merged_values(*layers: dict[str, Any]) -> dict[str, Any]:
    """The layers combined as `helm -f a.yaml -f b.yaml` combines its files: maps merged key by key, any other
    value of a later layer (a list, a scalar, a null) replacing an earlier one's."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            earlier = out.get(key)
            both_maps = isinstance(value, dict) and isinstance(earlier, dict)
            out[key] = merged_values(earlier, value) if both_maps else value
    return out


def values_with_files(value_set: str, files: list[Path], helm_dir: Path = HELM) -> dict[str, Any]:
    """The value set's values with `files` over it, in order, as `helm -f <value set's file> -f FILE...`."""
    return merged_values(values_for(value_set, helm_dir), *(helm.values_from_yaml(f.read_text()) for f in files))


def update_dependencies(helm_dir: Path = HELM) -> None:
    """`helm dependency update` for every service and tool chart, then the umbrella (it packages them)."""
    for chart in rendered_charts():
        helm.dependency_update(helm_dir / chart, skip_refresh=True)


@contextmanager
def prepared_copy() -> Iterator[Path]:
    """A throw-away copy of helm/ with every dependency resolved: the work tree stays untouched."""
    with tempfile.TemporaryDirectory(prefix="shopmesh-helm-") as tmp:
        copy = Path(tmp) / "helm"
        shutil.copytree(HELM, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
        update_dependencies(copy)
        yield copy


def render(
    helm_dir: Path,
    chart: str,
    value_set: str,
    *,
    namespace: str = NAMESPACE,
    values: dict[str, Any] | None = None,
    kube_version: str | None = None,
) -> dict[str, str]:
    """Template path -> rendered manifest (hooks included, empty files dropped), as `helm template`;
    `values` (if given) in place of the value set's file; `kube_version` (if given, "v1.28.0") the cluster
    version the templates see, as `helm template --kube-version`, else the SDK's default (v1.36.0 in Helm
    4.2), which the charts' minimums are below (1.27 for the HPA's ContainerResource metric, 1.29 for the
    mesh's native sidecars, 1.30 for the edge's `preStop: sleep`)."""
    release = UMBRELLA if chart == UMBRELLA else chart
    chosen = values_for(value_set, helm_dir) if values is None else values
    with helm.Chart.load(helm_dir / chart) as loaded:
        if kube_version is None:
            out = loaded.render(chosen, name=release, namespace=namespace, is_install=True)
        else:
            # Chart.render does not pass this option of the SDK's render on (helm-python-sdk 0.2.2); the
            # native call it wraps takes it.
            options = {"name": release, "namespace": namespace, "is_install": True, "kube_version": kube_version}
            raw = helm_native.call_string("helm_render", loaded._raw(), json.dumps(chosen), json.dumps(options))
            out = json.loads(raw)
    return {path: text for path, text in sorted(out.items()) if text.strip() and not path.endswith("NOTES.txt")}


def notes(helm_dir: Path, values: dict[str, Any]) -> str:
    """The umbrella's NOTES.txt with `values`, as `helm install` prints it after the release (render leaves it out:
    it is no manifest)."""
    with helm.Chart.load(helm_dir / UMBRELLA) as loaded:
        out = loaded.render(values, name=UMBRELLA, namespace=NAMESPACE, is_install=True)
    text: str = out[f"{UMBRELLA}/templates/NOTES.txt"]
    return text


def lint(helm_dir: Path, chart: str, value_set: str) -> dict[str, Any]:
    return helm.lint(helm_dir / chart, values_for(value_set, helm_dir), namespace=NAMESPACE, kube_version="v1.32.0")


def infra_manifests() -> dict[str, str]:
    """The dev cluster's plain manifests (k8s/namespaces.yaml and k8s/infra, as `kubectl apply -k` reads
    them: the kustomization only lists resources)."""
    kustomization = helm.values_from_yaml((INFRA / "kustomization.yaml").read_text())
    files = {"namespaces.yaml": (ROOT / "k8s" / "namespaces.yaml").read_text()}
    files.update({name: (INFRA / name).read_text() for name in kustomization["resources"]})
    return files


# What Istio retries on a route that sets no retry policy of its own: the ingress gateway's routes to the edge
# (the charts' HTTPRoute and GRPCRoute: Gateway API v1.2's standard channel has no retry field), and any
# service's when global.meshPolicy.enabled=false leaves out the VirtualServices. Unset, Istio's own default
# retries UNAVAILABLE, CANCELLED and 503 twice (istio/istio pilot/pkg/networking/core/route/retry/retry.go),
# so one client call could run three times: the gateway mints an idempotency key per call when the client
# sends none, three orders and three charges of one checkout, Register and Login three times. Only what never
# reached the callee is retried, the policy the charts' VirtualServices give calls between the services
# (helm/shopmesh-lib/templates/_mesh.tpl; tests/k8s/test_ingress.py holds them equal).
ISTIO_DEFAULT_HTTP_RETRY_POLICY: dict[str, Any] = {"attempts": 2, "retryOn": "connect-failure,refused-stream"}


def istio_tracing(helm_dir: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The IstioOperator overlay k8s/scripts/mesh-istio.sh installs: the mesh's default retry policy
    (ISTIO_DEFAULT_HTTP_RETRY_POLICY) and connect timeout (the local mesh's), always, and the tracing provider
    the charts' Telemetry objects select, at the collector the services export to (global.otel.endpoint), both
    read from the umbrella as the istio value set (or `values`) renders it: the chart is the one place they are
    written. No Telemetry (no endpoint): no provider."""
    texts = render(helm_dir, UMBRELLA, "istio", values=values).values()
    docs = [d for text in texts for d in documents(text)]
    providers = {
        provider["name"]
        for d in docs
        if d["kind"] == "Telemetry"
        for tracing in d["spec"]["tracing"]
        for provider in tracing["providers"]
    }
    endpoints = {
        d["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] for d in docs if "OTEL_EXPORTER_OTLP_ENDPOINT" in d.get("data", {})
    }
    mesh_config: dict[str, Any] = {
        "defaultHttpRetryPolicy": dict(ISTIO_DEFAULT_HTTP_RETRY_POLICY),
        # Where no DestinationRule sets one: the ingress gateway's connections to the edge (which has none), any
        # service's with global.meshPolicy.enabled=false. Istio's own is 10 s, past the deadlines the edge's
        # clients give it, so a connect to a silent gateway pod (its node gone) failed the call instead of being
        # retried on another pod. The local mesh's, which the charts' DestinationRules set too.
        "connectTimeout": CONNECT_TIMEOUT,
    }
    if providers:
        if len(providers) != 1 or len(endpoints) != 1:
            raise ValueError(f"expected one tracing provider and one collector, not {providers} and {endpoints}")
        # Envoy's OpenTelemetry provider exports OTLP/gRPC to a Service by its host name and port.
        endpoint = endpoints.pop()
        # Its host is the Service's full name, which Istio looks the provider's service up by: the chart
        # refuses any other (shopmesh-lib/_config.tpl) before this reads it.
        collector = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        provider = {"name": providers.pop(), "opentelemetry": {"service": collector.hostname, "port": collector.port}}
        mesh_config["extensionProviders"] = [provider]
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {"meshConfig": mesh_config}}


def secrets_read(helm_dir: Path, values: dict[str, Any]) -> list[str]:
    """The names of the Secrets the umbrella's pods read with `values` (volumes, env, envFrom, a private
    registry's imagePullSecrets; the `helm test` pods' too): the platform's, which no chart creates. A pod whose
    Secret is missing never starts (its volume cannot be mounted, its image not pulled), and a release may read
    one its predecessor did not."""
    texts = render(helm_dir, UMBRELLA, "custom", values=values).values()
    names: set[str] = set()
    for doc in (d for text in texts for d in documents(text)):
        if doc["kind"] not in ("Deployment", "Pod"):
            continue
        pod = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc.get("spec", {})
        names.update(pull["name"] for pull in pod.get("imagePullSecrets", []))
        for volume in pod.get("volumes", []):
            names.update([volume["secret"]["secretName"]] if "secret" in volume else [])
            names.update(s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s)
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            names.update(e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e)
            refs = (e.get("valueFrom", {}).get("secretKeyRef") for e in container.get("env", []))
            names.update(ref["name"] for ref in refs if ref)
    return sorted(names)


def write_all(helm_dir: Path, out: Path) -> list[Path]:
    """Render every chart with every value set into out/<set>/<chart>/<template path>; the dev
    infrastructure into out/infra/, replacing those folders. A folder that holds anything else is refused
    (ValueError): `--out .` or a typo must not delete what the render did not write."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: not a folder")
    rendered = ["infra", *VALUE_SETS]
    foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in rendered) if out.is_dir() else []
    if foreign:
        raise ValueError(
            f"--out {out}: the folder holds what the render did not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); give an empty or new one"
        )
    for old in (out / name for name in rendered):
        if old.exists():
            shutil.rmtree(old)
    written = []
    for name, text in infra_manifests().items():
        target = out / "infra" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        written.append(target)
    for value_set in VALUE_SETS:
        for chart in rendered_charts():
            for path, text in render(helm_dir, chart, value_set).items():
                target = out / value_set / chart / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text if text.endswith("\n") else text + "\n")
                written.append(target)
    return written


def _values_files_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument(
        "-f", "--values", dest="values_files", metavar="FILE", type=Path, action="append", default=[], help=help
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render_cmd = sub.add_parser("render", help="write every rendered manifest to a folder for review")
    render_cmd.add_argument("--out", type=Path, default=ROOT / "render")
    sub.add_parser("deps", help="resolve chart dependencies in place (charts/, Chart.lock; both gitignored)")
    secrets_cmd = sub.add_parser(
        "secrets", help="print the Secrets the umbrella's pods read, one a line (they must exist before they start)"
    )
    _values_files_option(secrets_cmd, "a values file the release is deployed with (repeatable, later wins, as helm -f)")
    tracing_cmd = sub.add_parser(
        "istio-tracing",
        help="print the IstioOperator overlay for the sidecars' spans and the mesh's default retry policy "
        "(JSON, which istioctl reads as YAML)",
    )
    _values_files_option(
        tracing_cmd,
        "a values file the release is deployed with, over the istio value set (repeatable, later wins, as helm -f)",
    )
    args = parser.parse_args(argv)
    missing = [str(f) for f in getattr(args, "values_files", []) if not f.is_file()]
    if missing:
        parser.error(f"no such values file: {', '.join(missing)}")
    if args.command == "deps":
        update_dependencies()
        print(f"dependencies resolved under {HELM}/*/charts/")
        return 0
    try:
        if args.command == "secrets":
            with prepared_copy() as helm_dir:
                files = [helm.values_from_yaml(f.read_text()) for f in args.values_files]
                for name in secrets_read(helm_dir, merged_values(*files)):
                    print(name)
            return 0
        if args.command == "istio-tracing":
            with prepared_copy() as helm_dir:
                own = values_with_files("istio", args.values_files, helm_dir) if args.values_files else None
                print(json.dumps(istio_tracing(helm_dir, own), indent=2))
            return 0
        with prepared_copy() as helm_dir:
            written = write_all(helm_dir, args.out)
    except (ValueError, helm.errors.HelmError, yaml.YAMLError) as exc:
        # The values or the folder an operator gave: the reason on one line, as `helm template` says it.
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"{len(written)} files in {args.out}/: <value set>/<chart>/ (value sets: {', '.join(VALUE_SETS)}), infra/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
