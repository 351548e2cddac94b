"""Helpers of the Kubernetes delivery tests: the k8s/ scripts (render, dockerfiles, dashboards, http_api,
values_schema, release_objects, caller_methods), tools, lookups."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from shopmesh_chassis.testing import free_ports
from shopmesh_platform.http_api import MAX_HEAP_BYTES, METRICS_PATH
from shopmesh_platform.mesh.envoy import heap_monitor_of
from shopmesh_platform.stack import envoy_binary

ROOT = Path(__file__).resolve().parents[2]


# Where running_http_api's Envoy writes its output, in its scratch folder.
ENVOY_LOG = "envoy.log"

# The Kubernetes release the manifests are validated against (the kubectl this project tests against).
KUBERNETES_VERSION = "1.32.0"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None, path
    assert spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render = _load("shopmesh_k8s_render", ROOT / "k8s" / "render.py")
dockerfiles = _load("shopmesh_k8s_dockerfiles", ROOT / "k8s" / "dockerfiles.py")
dashboards = _load("shopmesh_k8s_dashboards", ROOT / "k8s" / "dashboards.py")
http_api = _load("shopmesh_k8s_http_api", ROOT / "k8s" / "http_api.py")
storefront_countries = _load("shopmesh_k8s_storefront_countries", ROOT / "k8s" / "storefront_countries.py")
values_schema = _load("shopmesh_k8s_values_schema", ROOT / "k8s" / "values_schema.py")
release_objects = _load("shopmesh_k8s_release_objects", ROOT / "k8s" / "release_objects.py")
measure_rss = _load("shopmesh_k8s_measure_rss", ROOT / "k8s" / "measure_rss.py")
caller_methods = _load("shopmesh_k8s_caller_methods", ROOT / "k8s" / "caller_methods.py")

Docs = list[dict[str, Any]]


def tool(name: str) -> str:
    """A command-line tool from the venv, .tools/bin or PATH; fails the test (never skips) if missing."""
    for candidate in (ROOT / ".venv" / "bin" / name, ROOT / ".tools" / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: run `make k8s-tools` (or `make setup`)", pytrace=False)
    return found


def objects_of(helm_dir: Path, chart: str, values: dict[str, Any]) -> Docs:
    """Every object `chart` renders with `values` (in place of a value set's file), hooks included."""
    texts = render.render(helm_dir, chart, "custom", values=values).values()
    return [doc for text in texts for doc in render.documents(text)]


def peers_by_port(rules: list[dict[str, Any]], key: str) -> dict[int, list[dict[str, Any]]]:
    """port -> the peers (from/to entries) allowed on it; an absent peer list is {"anywhere": True}."""
    result: dict[int, list[dict[str, Any]]] = {}
    for rule in rules:
        for port in rule.get("ports", []):
            result.setdefault(port["port"], []).extend(rule.get(key, [{"anywhere": True}]))
    return result


def find(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def validate_custom_resources(objects: Docs) -> list[str]:
    """Problems of custom resources against their CRD schemas (Prometheus Operator, Istio, Gateway API), from the
    npm packages `make k8s-tools` installs; an empty list means every object is valid."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install Node.js 20+ (the custom resources' schemas run on it)", pytrace=False)
    tools = ROOT / ".tools"
    for package in ("prometheus-operator", "istio", "gateway-api"):
        if not (tools / "node_modules" / "@kubernetes-models" / package).is_dir():
            pytest.fail(f"the {package} schemas are missing: run `make k8s-tools`", pytrace=False)
    result = subprocess.run(
        [node, str(ROOT / "tests" / "k8s" / "validate_custom_resources.mjs"), str(tools)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    problems: list[str] = json.loads(result.stdout)
    return problems


# The untraced configuration with what the chart merges into it by default (--config-yaml): the monitor of
# Envoy's heap its overload actions name, bounded as `make run` bounds it (test_http_api checks the chart's is
# the same).
UNTRACED_ARGS = [
    "--config-path",
    http_api.CONFIG,
    "--config-yaml",
    json.dumps({"overload_manager": {"resource_monitors": [heap_monitor_of(MAX_HEAP_BYTES)]}}),
]


@contextlib.contextmanager
def running_http_api(
    files: dict[str, bytes], scratch: Path, args: list[str] | None = None, *, gateway: int | None = None
) -> Iterator[dict[int, int]]:
    """The gateway pod's `http-api` Envoy as rendered, run here: `files` are its ConfigMap's (file name →
    contents), put where `args` (the container's; by default the untraced configuration with the heap bound the
    chart gives it by default, UNTRACED_ARGS) name them; the
    configuration's listeners and admin interface moved from the pod's ports to free loopback ones (yields pod
    port → local port), what a --config-yaml in `args` adds used as it is; the gateway it calls on loopback at
    the local port `gateway` if given, else at a free one where nothing listens (not the pod's gateway port,
    50051: `make run`'s users service, or a README walkthrough's on pytest-xdist's other worker, listens
    there). Ready once its admin interface says so. Its output goes to `scratch`/ENVOY_LOG."""
    for name, content in files.items():
        (scratch / name).write_bytes(content)
    args = [arg.replace(f"{http_api.MOUNT}/", f"{scratch}/") for arg in args or UNTRACED_ARGS]
    config = scratch / Path(args[args.index("--config-path") + 1]).name
    moved = json.loads(config.read_text().replace(f"{http_api.MOUNT}/", f"{scratch}/"))
    addresses = [listener["address"]["socket_address"] for listener in moved["static_resources"]["listeners"]]
    addresses.append(moved["admin"]["address"]["socket_address"])
    wanted = sorted({address["port_value"] for address in addresses})
    *picked, nobody = free_ports(len(wanted) + 1)
    ports = dict(zip(wanted, picked, strict=True))
    held = contextlib.ExitStack()
    if gateway is None:
        # Bound but never listening, for as long as the Envoy runs: a connection there is refused.
        held.enter_context(socket.socket()).bind(("127.0.0.1", nobody))
        gateway = nobody
    for address in addresses:
        address.update(address="127.0.0.1", port_value=ports[address["port_value"]])
    for cluster in moved["static_resources"]["clusters"]:
        for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            address = endpoint["endpoint"]["address"]["socket_address"]
            if cluster["name"] == "gateway":
                address["port_value"] = gateway
            else:
                address["port_value"] = ports.get(address["port_value"], address["port_value"])
    config.write_text(json.dumps(moved))
    args[args.index("--config-path") + 1] = str(config)
    quiet = [] if "--log-level" in args else ["--log-level", "warn"]
    argv = [str(envoy_binary()), *args, *quiet, *([] if "--disable-hot-restart" in args else ["--disable-hot-restart"])]
    ready = f"http://127.0.0.1:{ports[http_api.ADMIN_PORT]}/ready"
    with held, _running(argv, lambda: _answers(ready), "the rendered http-api Envoy", scratch / ENVOY_LOG):
        yield ports


@contextlib.contextmanager
def trace_sink(folder: Path) -> Iterator[int]:
    """`make run`'s trace collector (OTLP/gRPC), storing what it receives under `folder`; yields its port. Its
    output goes to a file beside `folder` (`<folder>.log`)."""
    [port] = free_ports(1)
    argv = [sys.executable, "-m", "shopmesh_platform.trace_sink", "--port", str(port), "--dir", str(folder)]
    with _running(argv, lambda: _accepts(port), "the trace sink", folder.with_name(f"{folder.name}.log")):
        yield port


@contextlib.contextmanager
def _running(argv: list[str], ready: Callable[[], bool], what: str, log: Path) -> Iterator[None]:
    """`argv` as a process, its stderr written to `log`, once `ready()` says so (30 s at most; the
    log's end in the failure if it exits or is not ready by then); stopped after. A file, not a pipe: nobody
    reads the output while the tests run, and a process blocks on its next write once a pipe (64 KiB) is full
    (Envoy at debug level fills one in a few dozen requests), stalling every call through it."""

    def last_output() -> str:
        return log.read_bytes()[-4000:].decode(errors="replace")

    with log.open("wb") as output, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=output) as process:
        try:
            deadline = time.monotonic() + 30
            while not ready():
                assert process.poll() is None, f"{what} exited {process.returncode}: {last_output()}"
                assert time.monotonic() < deadline, f"{what} was not ready within 30 s: {last_output()}"
                time.sleep(0.1)
            yield
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@functools.cache
def envoy_metric_labels() -> dict[str, frozenset[str]]:
    """The series the gateway pod's http-api Envoy exposes to Prometheus (scraped through its metrics
    listener, as a ServiceMonitor does): each name with the label names its series carry."""
    files = ROOT / "helm" / "gateway" / "files"
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_http_api({path.name: path.read_bytes() for path in files.iterdir()}, Path(scratch)) as ports,
    ):
        url = f"http://127.0.0.1:{ports[http_api.METRICS_PORT]}{METRICS_PATH}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
    found: dict[str, set[str]] = {}
    for line in body.splitlines():
        if not line or line[0] == "#":
            continue
        name, _, rest = line.partition("{")
        name = name.split(" ")[0]
        labels = found.setdefault(name, set())
        if rest:
            labels |= set(re.findall(r'(\w+)="', rest.rpartition("}")[0]))
    return {name: frozenset(labels) for name, labels in found.items()}


def envoy_metric_names() -> frozenset[str]:
    return frozenset(envoy_metric_labels())


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


DEPLOY_STAGING = ROOT / "k8s" / "scripts" / "deploy-staging.sh"
# The mesh's values file every staging deploy gives (STAGING_VALUES), relative to the repository root.
STAGING_MESH_VALUES = "helm/shopmesh/values-istio.yaml"
# A kubectl that finds every Secret the pods read (`kubectl get secret ... --output name` prints it).
EVERY_SECRET_FOUND = "#!/bin/sh\necho secret/found\n"


def run_deploy_staging(
    tmp_path: Path, *, helm: str, kubectl: str = EVERY_SECRET_FOUND, **settings: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run k8s/scripts/deploy-staging.sh (`make deploy-staging`) against stand-in `helm` and `kubectl` scripts
    in `tmp_path`/bin, with the settings docs/kubernetes.md asks for and `settings` over them: its result, and
    the path the stand-ins may write their calls beside ($CAPTURE)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True)
    (stubs / "helm").write_text(helm)
    (stubs / "kubectl").write_text(kubectl)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    capture = tmp_path / "calls"
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "CAPTURE": str(capture),
        "STAGING_CONTEXT": "staging",
        "REGISTRY": "registry.example.com/shopmesh",
        "IMAGE_TAG": "1234567",
        # Staging renders only behind a mesh (docs/kubernetes.md, "Deploy to staging").
        "STAGING_VALUES": STAGING_MESH_VALUES,
        **settings,
    }
    result = subprocess.run([str(DEPLOY_STAGING)], env=env, capture_output=True, text=True, timeout=120, check=False)
    return result, capture
