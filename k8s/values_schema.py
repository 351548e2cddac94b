"""Write (or check) every chart's values.schema.json: helm/<service>/, helm/loadgenerator/ and the umbrella
helm/shopmesh/.

    .venv/bin/python k8s/values_schema.py          write them
    .venv/bin/python k8s/values_schema.py --check  exit 1 if one is missing or differs from what this writes

Helm checks a chart's values against its values.schema.json on install, upgrade, template and lint, and
each subchart's against the subchart's own: a misspelt key (`resource:`, `autoscalling:`) or a wrong type
(`replicaCount: "2"`) is refused with the key's path instead of rendering without it. The keys every
service chart takes are the library chart's (helm/shopmesh-lib, which reads them all in _config.tpl), so
they are described once here, with `global:` (the same in every chart: a values-<set>.yaml works for a
service chart alone) and each chart's own keys, and written into each chart. Not a schema in the library
chart itself: Helm validates a dependency's schema against values[<its name>] (`shopmesh-lib:`, which holds
only the copied `global:`), never against the service chart's keys that the library's templates read.

Maps whose keys are the user's (labels, nodeSelector, Kubernetes objects passed through: peers, affinity,
tolerations, parentRefs) take any key; `env:` takes the variables its service's settings class reads; every
other map refuses a key it does not know.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELM = ROOT / "helm"
UMBRELLA = "shopmesh"
LOADGENERATOR = "loadgenerator"
SCHEMA = "values.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

sys.path.insert(0, str(ROOT / "libs" / "platform" / "src"))
sys.path.insert(0, str(ROOT / "libs" / "chassis" / "src"))
# Every service's, for the settings classes that say which env: keys its chart takes.
for _service_src in sorted((ROOT / "services").glob("*/src")):
    sys.path.insert(0, str(_service_src))
from pydantic import BaseModel  # noqa: E402

from shopmesh_chassis.config import SECRETS_DIR, DatabaseSettings, ServiceSettings  # noqa: E402
from shopmesh_notifications.settings import NotificationsSettings  # noqa: E402
from shopmesh_platform.generated_files import stale, write_or_check  # noqa: E402
from shopmesh_platform.topology import SERVICES, settings_class  # noqa: E402

Schema = dict[str, Any]

# What a settings field's JSON schema says about its values (not its title, default or description).
CONSTRAINTS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength")


def setting(field: str, settings: type[BaseModel] = ServiceSettings) -> Schema:
    """A value the chart hands the service as this settings field (LOG_LEVEL, DRAIN_DELAY_SECONDS...): the
    field's own constraints, from the service's settings class, so that the chart refuses what the service
    would refuse at start (exit 2 in every pod, a crash loop) and the two cannot drift apart."""
    field_schema: Schema = _settings_properties(settings)[field]
    schema = {key: value for key, value in field_schema.items() if key in CONSTRAINTS}
    # An enum says the type; without "type" nullable() adds null to the enum, where null can pass.
    return {key: value for key, value in schema.items() if key != "type"} if "enum" in schema else schema


@functools.cache
def _settings_properties(settings: type[BaseModel]) -> dict[str, Schema]:
    """Each field's JSON schema, built once per settings class (pydantic builds the whole class's each call)."""
    properties: dict[str, Schema] = settings.model_json_schema()["properties"]
    return properties


def either_case(schema: Schema) -> Schema:
    """An enum of names also taken in upper or lower case (`debug` for DEBUG): the template folds the value to
    the case the service takes (_config.tpl)."""
    names: list[str] = schema["enum"]
    return {**schema, "enum": list(dict.fromkeys([*names, *(n.upper() for n in names), *(n.lower() for n in names)]))}


def nullable(schema: Schema) -> Schema:
    """`schema` or null: Helm's way to drop a default (`--set catalog.resources.limits=null`), which it leaves in
    the values where the chart has no default to drop, and the templates read as unset."""
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return {**schema, "type": [*types, "null"] if "null" not in types else types}
    if "enum" in schema:
        return schema if None in schema["enum"] else {**schema, "enum": [*schema["enum"], None]}
    null: Schema = {"type": "null"}
    return schema if null in schema["anyOf"] else {**schema, "anyOf": [*schema["anyOf"], null]}


def strict(description: str | None = None, /, **properties: Schema) -> Schema:
    """A map of these keys only (none required: every key has a default somewhere), each of them nullable."""
    schema: Schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {key: nullable(value) for key, value in properties.items()},
    }
    if description:
        schema["description"] = description
    return schema


def map_of(values: Schema, description: str | None = None) -> Schema:
    """A map whose keys are the user's, each value `values` (or null)."""
    schema: Schema = {"type": "object", "additionalProperties": nullable(values)}
    if description:
        schema["description"] = description
    return schema


def list_of(items: Schema) -> Schema:
    return {"type": "array", "items": items}


STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
# Kubernetes objects passed through as written (a NetworkPolicy peer, an affinity, a toleration): the API
# server validates them.
OBJECT: Schema = {"type": "object"}
# Text that may be written as a number (an all-digit tag, an env value): shopmesh-lib.string prints it back.
TEXT: Schema = {"type": ["string", "number"]}
PEERS: Schema = list_of(OBJECT)
# A quantity (100m, 1, "256Mi"), or null: no such key (`--set ...limits.cpu=null`).
QUANTITIES: Schema = map_of({"type": ["string", "number"]})
RESOURCES: Schema = strict("requests and limits, key by key over the defaults", requests=QUANTITIES, limits=QUANTITIES)
IMAGE_PULL_SECRETS: Schema = list_of({"anyOf": [STRING, strict(name=STRING)]})
# Kubernetes' own forms (apimachinery's validation): a label's or annotation's key is a qualified name, an
# optional DNS-subdomain prefix and "/" before a name of up to 63 characters; a label's value is such a name or
# empty. The render passes what does not match and the API server refuses the object, the release with it. (The
# prefix's 253 characters are not counted: Helm's schema regexes have no lookahead.)
QUALIFIED_NAME = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_SUBDOMAIN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
KEY = f"^({DNS_SUBDOMAIN}/)?{QUALIFIED_NAME}$"
LABEL_VALUE: Schema = {"type": "string", "pattern": f"^({QUALIFIED_NAME})?$"}


def keyed(values: Schema) -> Schema:
    """A map of Kubernetes labels or annotations: keys the API takes, each value `values` (or null). By pattern,
    not propertyNames: Helm then names the map a wrong key is in (`at '/podLabels': additional properties ...`)."""
    return {"type": "object", "patternProperties": {KEY: nullable(values)}, "additionalProperties": False}


NODE_SELECTOR: Schema = keyed({"type": ["string", "number", "boolean"], "pattern": LABEL_VALUE["pattern"]})
LABELS: Schema = keyed(LABEL_VALUE)
ANNOTATIONS: Schema = keyed(STRING)
# A Secret's name or key: "" names none, and the API server refuses the pod that mounts it.
NAME: Schema = {"type": "string", "minLength": 1}
# Counts and percentages have the API server's bounds: a render that passes them would be refused with the
# whole release (a Deployment's replicas below 0, an HPA's replicas below 1 or its target 0). That minReplicas is
# at most maxReplicas is beyond a schema: _config.tpl checks it.
REPLICAS: Schema = {"type": "integer", "minimum": 0}
PERCENT: Schema = {"type": "integer", "minimum": 0, "maximum": 100}
PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
AUTOSCALING: Schema = strict(
    enabled=BOOLEAN,
    minReplicas={"type": "integer", "minimum": 1},
    maxReplicas={"type": "integer", "minimum": 1},
    targetCPUUtilizationPercentage={**PERCENT, "minimum": 1},
)
# A number of pods or a percentage of them ("50%": the API takes none above 100 %).
PODS_OR_PERCENT: Schema = {"type": ["integer", "string"], "minimum": 0, "pattern": "^([0-9]|[1-9][0-9]|100)%$"}
# One of minAvailable and maxUnavailable (_config.tpl refuses both in one place).
PDB: Schema = strict(enabled=BOOLEAN, minAvailable=PODS_OR_PERCENT, maxUnavailable=PODS_OR_PERCENT)
# Seconds: the render adds them up and checks them (_config.tpl), so not necessarily whole.
DRAIN: Schema = strict(
    drainDelaySeconds=setting("drain_delay_seconds"),
    shutdownGraceSeconds=setting("shutdown_grace_seconds"),
    shutdownHooksBudgetSeconds=setting("shutdown_hooks_budget_seconds"),
    terminationGracePeriodSeconds=NUMBER,
)
# Image references as Docker reads them. A registry is a host with an optional port and path, no scheme
# (https://reg.example.com would render https://reg.example.com/shopmesh-catalog, which no runtime pulls); a tag
# is Docker's (no ":" or "@": a digest has its own key, image.digest); "" for none, the chart's default. A tag
# written as a number (an all-digit build number) is printed back as its digits.
REGISTRY: Schema = {
    "type": "string",
    "pattern": r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*/?)?$",
}
TAG: Schema = {"type": ["string", "number"], "pattern": "^([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"}
DIGEST: Schema = {
    "type": "string",
    "pattern": "^([A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
}
# The weight is a whole percentage (Istio's and the Gateway API's weights are integers); none given is 0 in
# _config.tpl, the two-step rollout's first step. _config.tpl refuses a weight above 0 with no canary pod to
# take it.
CANARY: Schema = strict(enabled=BOOLEAN, weight=PERCENT, replicaCount=REPLICAS, image=strict(tag=TAG, digest=DIGEST))
# _config.tpl checks each one's form (a duration, a gRPC status, a percentage) with its own message.
FAULT: Schema = strict(delay=TEXT, abort=STRING, percent=TEXT)
# Each is set in global: for every service and may be replaced in a service chart: one list, both places.
PULL_POLICY: Schema = {"enum": ["Always", "IfNotPresent", "Never"]}
DATABASE_MODE: Schema = {"enum": ["sqlite", "postgres"]}
# Each pod's PostgreSQL pool (DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW); _config.tpl checks their sum, which a
# schema cannot say.
DATABASE_POOL: Schema = strict(
    size=setting("database_pool_size", DatabaseSettings),
    maxOverflow=setting("database_max_overflow", DatabaseSettings),
)
# The old pods a rolling update may have draining at once, each holding its pool (_config.tpl counts them).
DRAINING_PODS: Schema = {"type": "integer", "minimum": 0}
ROUTE: Schema = strict(parentRefs=list_of(OBJECT), hostnames=list_of(STRING))
# A first-event alert's counter, which shopmesh-lib.alert (_monitoring.tpl) turns into the alert's expression.
COUNTED: Schema = {**strict(series=STRING, window=STRING, by=STRING), "required": ["series", "window"]}
ALERT: Schema = {
    **strict(
        alert=STRING,
        expr=STRING,
        counted=COUNTED,
        severity=STRING,
        summary=STRING,
        description=STRING,
        **{"for": STRING},
    ),
    "required": ["alert"],
    # Its expression written out, or built from its counter: one of the two.
    "oneOf": [{"required": ["expr"]}, {"required": ["counted"]}],
}
# One of the pods' spread constraints (per node, per zone), key by key over the chart's (maxSkew 1, ScheduleAnyway).
SPREAD: Schema = strict(
    maxSkew={"type": "integer", "minimum": 1},
    whenUnsatisfiable={"enum": ["ScheduleAnyway", "DoNotSchedule"]},
    minDomains={"type": "integer", "minimum": 1},
)
# On or off, or on with the constraints' settings.
TOPOLOGY_SPREAD: Schema = {"anyOf": [BOOLEAN, strict(enabled=BOOLEAN, hostname=SPREAD, zone=SPREAD)]}
# The scheduling and pull settings: in global: for every pod, in a service chart to replace the global one.
SCHEDULING: dict[str, Schema] = {
    "imagePullSecrets": IMAGE_PULL_SECRETS,
    "nodeSelector": NODE_SELECTOR,
    "tolerations": list_of(OBJECT),
    "affinity": OBJECT,
    "priorityClassName": STRING,
}
# Settings a service chart may give and global: gives every service (the service's value wins).
SHARED: dict[str, Schema] = {
    "replicaCount": REPLICAS,
    "autoscaling": AUTOSCALING,
    "podDisruptionBudget": PDB,
    "drain": DRAIN,
    "logLevel": either_case(setting("log_level")),
    "logFormat": either_case(setting("log_format")),
    "podAnnotations": ANNOTATIONS,
    "podLabels": LABELS,
    "tests": strict(enabled=BOOLEAN),
    "topologySpread": TOPOLOGY_SPREAD,
    # A cloud's workload identity (IRSA, GKE, Azure) is an annotation on the ServiceAccount, key by key.
    "serviceAccount": strict(annotations=ANNOTATIONS),
    **SCHEDULING,
}

# global: the environment's settings (helm/shopmesh/values*.yaml), read by the library chart and the umbrella.
GLOBAL: Schema = strict(
    "environment-wide settings, the same for the umbrella chart and any service chart alone",
    environment=STRING,
    # The cluster's DNS domain, in every Service name the charts build (<service>.<namespace>.svc.<domain>): a
    # DNS name, no trailing dot (the names are written with a dot after it nowhere).
    clusterDomain={"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
    imageRegistry=REGISTRY,
    thirdPartyRegistry=REGISTRY,
    imageTag=TAG,
    imagePullPolicy=PULL_POLICY,
    resources=map_of(RESOURCES, "per service: the environment's sizing of it"),
    database=strict(
        mode=DATABASE_MODE,
        port=PORT,
        peers=PEERS,
        pool=DATABASE_POOL,
        drainingPods=DRAINING_PODS,
        maxConnections={"type": "integer", "minimum": 1},
    ),
    nats=strict(url=STRING, existingSecret=STRING, secretKey=NAME, port=PORT, peers=PEERS),
    smtp=strict(
        host=STRING,
        port=setting("smtp_port", NotificationsSettings),
        useTLS=BOOLEAN,
        existingSecret=STRING,
        peers=PEERS,
    ),
    networkPolicy=strict(
        enabled=BOOLEAN,
        clients=PEERS,
        dns=PEERS,
        scrapers=PEERS,
        extraEgress=list_of(OBJECT),
        extraIngress=list_of(OBJECT),
        # Where the mesh's control plane runs (each mesh's own install's namespace when unset).
        meshControlPlane=strict(namespace=NAME, podLabels=LABELS),
    ),
    mesh={"enum": ["", "istio", "linkerd"]},
    meshPolicy=strict(
        enabled=BOOLEAN,
        trustDomain=STRING,
        ejectAfterConsecutiveErrors={"type": "integer", "minimum": 0},
        ejectionSeconds={"type": "integer", "minimum": 1},
        linkerdInboundPort=PORT,
    ),
    canary=map_of(CANARY, "per service: its canary"),
    faults=map_of(FAULT, "per service: a fault injected into its calls"),
    httpApi=strict(image=STRING, resources=RESOURCES),
    otel=strict(endpoint=STRING, port=PORT, samplerRatio=setting("otel_traces_sampler_ratio"), peers=PEERS),
    monitoring=strict(
        enabled=BOOLEAN,
        interval=STRING,
        labels=LABELS,
        dashboards=strict(enabled=BOOLEAN, namespace=STRING),
        errorRatio={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        latencyP99Seconds={"type": "number", "exclusiveMinimum": 0},
        consumerBacklog={"type": "integer", "minimum": 0},
        runbookUrl=STRING,
    ),
    **SHARED,
)

# A service chart's keys: what the library chart's templates read (_config.tpl), plus `global:` and the
# umbrella's `enabled` (its dependency condition, which Helm leaves in the subchart's values).
LIBRARY: dict[str, Schema] = {
    "global": GLOBAL,
    "enabled": BOOLEAN,
    "service": strict(name=setting("service_name"), grpcServices=list_of(STRING)),
    "image": strict(registry=REGISTRY, repository=STRING, tag=TAG, digest=DIGEST, pullPolicy=PULL_POLICY),
    "resources": RESOURCES,
    "defaultResources": RESOURCES,
    "probes": strict(
        readinessPeriodSeconds=NUMBER,
        readinessFailureThreshold=NUMBER,
        livenessPeriodSeconds={"type": "integer", "minimum": 1},
        startupFailureThreshold={"type": "integer", "minimum": 1},
    ),
    "database": strict(
        enabled=BOOLEAN,
        mode=DATABASE_MODE,
        existingSecret=NAME,
        secretKey=NAME,
        dataSizeLimit=STRING,
        pool=DATABASE_POOL,
        drainingPods=DRAINING_PODS,
    ),
    "idempotency": strict(enabled=BOOLEAN, existingSecret=NAME, secretKey=NAME),
    "events": strict(publishes=list_of(STRING), consumes=list_of(STRING)),
    "email": strict(enabled=BOOLEAN),
    "callers": list_of(STRING),
    "callerMethods": map_of(list_of(STRING), "per caller: the methods it calls"),
    "calls": list_of(STRING),
    "networkPolicy": strict(enabled=BOOLEAN, extraEgress=list_of(OBJECT), extraIngress=list_of(OBJECT)),
    "canary": CANARY,
    "fault": FAULT,
    "httpApi": strict(enabled=BOOLEAN, image=STRING, port=INTEGER, resources=RESOURCES),
    "ingress": strict(http=ROUTE, grpc=ROUTE, traces=BOOLEAN),
    "alerts": list_of(ALERT),
    # The SLOs of the service's API and their burn-rate alerts (_monitoring.tpl; the gateway's chart).
    "slo": strict(
        enabled=BOOLEAN,
        availability=strict(objective=NUMBER),
        latency=strict(objective=NUMBER, thresholdSeconds=NUMBER, excludedMethods=list_of(STRING)),
    ),
    "env": map_of({"type": ["string", "number", "boolean"]}, "service-specific settings, as environment variables"),
    **SHARED,
}

# Each chart's own keys, beside the library's (a service chart) or its subcharts' (the umbrella).
OWN: dict[str, dict[str, Schema]] = {
    # Helm gives every dependency a scope of its own, the library too: a copy of global: under its name.
    **{
        name: {"shopmesh-lib": {"type": "object", "description": "Helm's scope of the library chart"}}
        for name in SERVICES
    },
    # Locust's shoppers (helm/loadgenerator): none of a service's keys, which the library reads in _config.tpl.
    LOADGENERATOR: {
        "global": GLOBAL,
        "enabled": BOOLEAN,
        "shopmesh-lib": {"type": "object", "description": "Helm's scope of the library chart"},
        "image": strict(repository=STRING, tag=TAG, digest=DIGEST),
        "target": strict("the gateway's Service and its HTTP/JSON port", service=STRING, port=PORT),
        "shoppers": {"type": "integer", "minimum": 1},
        "spawnRate": {"type": "number", "exclusiveMinimum": 0},
        "think": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(,[0-9]+(\.[0-9]+)?)?$"},
        "declinedShare": {"type": "number", "minimum": 0, "maximum": 1},
        "cancelShare": {"type": "number", "minimum": 0, "maximum": 1},
        "resources": RESOURCES,
    },
    UMBRELLA: {
        "global": GLOBAL,
        "defaultDenyNetworkPolicy": strict(enabled=BOOLEAN),
        # Each service's own values: its chart's schema checks them (Helm validates every subchart).
        **{name: {"type": "object", "description": f"the {name} chart's values"} for name in SERVICES},
        LOADGENERATOR: {"type": "object", "description": "the loadgenerator chart's values (enabled: false: off)"},
    },
}


LIBRARY_ENV = "GRPC_VERBOSITY|GRPC_TRACE|OTEL_[A-Z0-9_]+"


def env(service: str) -> Schema:
    """A service chart's env: only the variables its service reads (its settings class's, SECRETS_DIR, and its
    libraries' LIBRARY_ENV): a misspelt one (RATE_LIMIT_PER_SECONDS) rendered into the ConfigMap and was ignored,
    the default in force."""
    names = sorted({*(name.upper() for name in settings_class(service).model_fields), SECRETS_DIR})
    # By pattern, not propertyNames, as keyed(): Helm then names the map the key is in (`at '/env'`). Besides the
    # settings, what the libraries in every service read themselves: gRPC core's logging (GRPC_VERBOSITY,
    # GRPC_TRACE; docs/chassis.md) and the OpenTelemetry SDK's OTEL_* (OTEL_BSP_MAX_QUEUE_SIZE, docs/operations.md).
    values = LIBRARY["env"]["additionalProperties"]
    pattern = f"^({'|'.join(names)}|{LIBRARY_ENV})$"
    return {**LIBRARY["env"], "patternProperties": {pattern: values}, "additionalProperties": False}


def schema(chart: str) -> Schema:
    library = {**LIBRARY, "env": env(chart)} if chart in SERVICES else {}
    properties = {key: nullable(value) for key, value in {**library, **OWN.get(chart, {})}.items()}
    return {
        "$schema": DRAFT,
        "title": f"values of the {chart} chart",
        "$comment": "Generated by k8s/values_schema.py: edit that, then `make values-schema`.",
        "type": "object",
        "additionalProperties": False,
        "properties": dict(sorted(properties.items())),
    }


def charts() -> list[str]:
    return [*SERVICES, LOADGENERATOR, UMBRELLA]


def rendered(chart: str) -> str:
    return json.dumps(schema(chart), indent=2) + "\n"


def schemas() -> dict[Path, str]:
    return {HELM / chart / SCHEMA: rendered(chart) for chart in charts()}


SOURCE = "what k8s/values_schema.py writes"


def problems() -> list[str]:
    return stale(schemas(), ROOT, SOURCE)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(argv, __doc__, schemas, root=ROOT, source=SOURCE, remedy="make values-schema")


if __name__ == "__main__":
    sys.exit(main())
