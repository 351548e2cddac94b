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


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        # Each renders, and the API server then refuses its object, failing the whole release.
        ({"replicaCount": -1}, "- at '/replicaCount': minimum: got -1, want 0"),
        ({"global": {"replicaCount": -1}}, "- at '/global/replicaCount': minimum: got -1, want 0"),
        ({"autoscaling": {"minReplicas": 0}}, "- at '/autoscaling/minReplicas': minimum: got 0, want 1"),
        ({"autoscaling": {"maxReplicas": 0}}, "- at '/autoscaling/maxReplicas': minimum: got 0, want 1"),
        (
            {"autoscaling": {"targetCPUUtilizationPercentage": 0}},
            "- at '/autoscaling/targetCPUUtilizationPercentage': minimum: got 0, want 1",
        ),
        ({"podDisruptionBudget": {"minAvailable": -1}}, "- at '/podDisruptionBudget/minAvailable': minimum"),
        ({"podDisruptionBudget": {"maxUnavailable": "150%"}}, "- at '/podDisruptionBudget/maxUnavailable': '150%'"),
        ({"probes": {"livenessPeriodSeconds": 0}}, "- at '/probes/livenessPeriodSeconds': minimum: got 0, want 1"),
        ({"global": {"database": {"port": 0}}}, "- at '/global/database/port': minimum: got 0, want 1"),
        # Weights are whole percentages: 0.5 rendered as 0, 10.5 as 10.
        ({"canary": {"weight": 0.5}}, "- at '/canary/weight': got number, want null or integer"),
        ({"canary": {"weight": 10.5}}, "- at '/canary/weight': got number, want null or integer"),
        ({"canary": {"weight": 101}}, "- at '/canary/weight': maximum: got 101, want 100"),
        ({"canary": {"replicaCount": -1}}, "- at '/canary/replicaCount': minimum: got -1, want 0"),
        # Image references no runtime pulls: a registry with a scheme, a tag with a ":" or a digest in it.
        ({"global": {"imageRegistry": "https://reg.example.com"}}, "- at '/global/imageRegistry': 'https://"),
        ({"image": {"tag": "v1:2"}}, "- at '/image/tag': 'v1:2' does not match pattern"),
        ({"global": {"imageTag": "latest@sha256:00"}}, "- at '/global/imageTag': 'latest@sha256:00'"),
        ({"canary": {"image": {"tag": "-rc1"}}}, "- at '/canary/image/tag': '-rc1' does not match pattern"),
        ({"image": {"digest": "0" * 64}}, "- at '/image/digest': '" + "0" * 64 + "' does not match pattern"),
    ],
)
def test_a_value_the_api_server_refuses_is_refused_by_the_schema_naming_the_key(
    helm_dir: Path, values: dict[str, Any], refused: str
) -> None:
    assert refused in refusal(helm_dir, "catalog", values)


@pytest.mark.parametrize(
    ("expression", "refused"),
    [
        # Both: the template would build it from the counter, dropping the expression written out unseen.
        (
            {"expr": "up == 0", "counted": {"series": "x_total{__selector__}", "window": "5m"}},
            "- at '/alerts/0': 'oneOf' failed, subschemas 0, 1 matched",
        ),
        ({}, "  - at '/alerts/0': missing property 'counted'"),
        ({"counted": {"series": "x_total{__selector__}"}}, "- at '/alerts/0/counted': missing property 'window'"),
    ],
)
def test_an_alert_needs_either_its_expression_or_its_counter(
    helm_dir: Path, expression: dict[str, Any], refused: str
) -> None:
    alert = {"alert": "A", "for": "0m", "severity": "warning", "summary": "s", "description": "d", **expression}
    assert refused in refusal(helm_dir, "catalog", {"alerts": [alert]})


def test_an_env_variable_its_service_does_not_read_is_refused_naming_it(helm_dir: Path) -> None:
    """A misspelt setting (one S too many) rendered into the ConfigMap and was ignored: the default in force."""
    message = refusal(helm_dir, "gateway", {"env": {"RATE_LIMIT_PER_SECONDS": 5}})
    assert "- at '/env': additional properties 'RATE_LIMIT_PER_SECONDS' not allowed" in message, message
    # Another service's setting is not this one's: users reads no rate limit.
    assert "'RATE_LIMIT_PER_SECOND'" in refusal(helm_dir, "users", {"env": {"RATE_LIMIT_PER_SECOND": 5}})
    # Through the umbrella as well.
    message = refusal(helm_dir, render.UMBRELLA, {"orders": {"env": {"SAGA_LEASE_SECOND": 30}}})
    assert "orders:\n- at '/env': additional properties 'SAGA_LEASE_SECOND' not allowed" in message, message
    objects_of(helm_dir, "gateway", {"env": {"RATE_LIMIT_PER_SECOND": 5}})


def test_the_env_its_libraries_read_is_let_through(helm_dir: Path) -> None:
    """gRPC core's logging and the OpenTelemetry SDK's settings, which the docs tell operators to set."""
    objects_of(
        helm_dir, "orders", {"env": {"GRPC_VERBOSITY": "INFO", "GRPC_TRACE": "http", "OTEL_BSP_MAX_QUEUE_SIZE": 4096}}
    )
    assert "'OTEL_bsp'" in refusal(helm_dir, "orders", {"env": {"OTEL_bsp": 1}})


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


# What the library chart's templates read of the values, by path (("global", "smtp", "host")), so that a key
# read there but not described in k8s/values_schema.py fails here, not for every user who sets it. "*" is a key
# the templates compute (global.resources.<name>): the schema must take any key there.
ValuesPath = tuple[str, ...]
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|:=|[()|,=]|[^\s()|,="`]+')
# An action, `{{ ... }}`, whose strings may hold "}}" (an alert's description holds {{ $labels.x }}).
ACTION = re.compile(r'\{\{-?((?:"(?:[^"\\]|\\.)*"|`[^`]*`|[^"`}]|\}(?!\}))*?)-?\}\}')
# Maps the templates dig into that are not the values read by path, each with why.
NOT_VALUES = {
    ".": "a template's argument or a range's element (a parentRef): a Kubernetes object, not the values",
    "$resources": "resources merged from defaultResources, global.resources.<name> and resources, read above",
    '(ternary . dict (kindIs "map" .))': "an imagePullSecrets entry, a list's element",
}


def _groups(tokens: list[str]) -> list[Any]:
    """The tokens with each parenthesised part nested as a list of its own."""
    stack: list[list[Any]] = [[]]
    for token in tokens:
        if token == "(":
            stack.append([])
        elif token == ")":
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            stack[-1].append(token)
    assert len(stack) == 1, f"unbalanced parentheses in {tokens}"
    return stack[0]


def _text(part: Any) -> str:
    return f"({' '.join(_text(p) for p in part)})" if isinstance(part, list) else str(part)


class ValuesReads:
    """The paths one template file reads: `.Values.a.b`, `$v.a` (a variable bound to values: `$v := .Values ...`,
    `$g := $v.global ...`, `$smtp := dig "smtp" dict $g`), `dig "a" "b" <default> <values>`, `get`/`hasKey`/`index`
    on values. Any other dig fails the extraction unless NOT_VALUES names its map."""

    def __init__(self) -> None:
        self.paths: set[ValuesPath] = set()
        self.not_values_seen: set[str] = set()
        self.bound: dict[str, set[ValuesPath]] = {}

    def of(self, part: Any) -> set[ValuesPath] | None:
        """The values paths `part` stands for, or None when it is not the values."""
        if isinstance(part, list):
            command = self._commands(part)[0]
            if command and command[0] == "dig":
                return self._dig(command[1:])
            return self.of(command[0]) if len(command) == 1 else None
        for root in (".Values", "$.Values"):
            if part == root or part.startswith(f"{root}."):
                return {tuple(part.split(".")[2:])}
        head, *fields = part.split(".")
        return {base + tuple(fields) for base in self.bound[head]} if head in self.bound else None

    def _dig(self, args: list[Any]) -> set[ValuesPath] | None:
        assert len(args) >= 3, f"dig with fewer than a key, a default and a map: {_text(args)}"
        *keys, default, values = args
        bases = self.of(values)
        if bases is None:
            assert _text(values) in NOT_VALUES, f"dig into a map this does not know: {_text(['dig', *args])}"
            self.not_values_seen.add(_text(values))
            return None
        path: list[str] = []
        for key in keys:
            assert isinstance(key, str), f"dig with a computed key: {_text(['dig', *args])}"
            if key.startswith('"'):
                path.append(key[1:-1])
            else:
                assert re.fullmatch(r"\$\w+", key), f"dig with a key of a form this does not know: {key}"
                path.append("*")
        read = {base + tuple(path) for base in bases}
        self.paths |= read
        # A default dug from the values too is the other place the value comes from: global.canary.<name>.
        return read | (self.of(default) or set())

    @staticmethod
    def _commands(group: list[Any]) -> list[list[Any]]:
        commands: list[list[Any]] = [[]]
        for part in group:
            if part == "|":
                commands.append([])
            else:
                commands[-1].append(part)
        return commands

    def read(self, group: list[Any]) -> None:
        for command in self._commands(group):
            for index, part in enumerate(command):
                if isinstance(part, list):
                    self.read(part)
                elif part == "dig":
                    self._dig(command[index + 1 :])
                elif part in ("get", "hasKey", "index"):
                    self._keyed(part, command[index + 1 :])
                elif part in ("include", "template", "tpl"):
                    # The other template would read them as `.`, by paths this does not follow.
                    handed = [_text(arg) for arg in command[index + 1 :] if self.of(arg) is not None]
                    assert not handed, f"values handed to another template: {_text(command)}"
                elif "." in part.lstrip("$."):
                    self.paths |= self.of(part) or set()
            if ":=" in command or "=" in command:
                self._bind(command)

    def _keyed(self, function: str, args: list[Any]) -> None:
        bases = self.of(args[0]) if args else None
        if bases is None:
            return
        keys = args[1:] if function == "index" else args[1:2]
        path = []
        for key in keys:
            assert isinstance(key, str), f"{function} with a computed key: {_text(args)}"
            assert key[:1] in ('"', "$"), f"{function} with a key of a form this does not know: {key}"
            path.append(key[1:-1] if key.startswith('"') else "*")
        self.paths |= {base + tuple(path) for base in bases}

    def _bind(self, command: list[Any]) -> None:
        """`$x := <values>` binds $x to its paths; any other value unbinds it (`range $k, $v := ...` too)."""
        at = command.index(":=") if ":=" in command else command.index("=")
        names = [name for name in command[:at] if name != ","]
        value = command[at + 1 :]
        for name in names:
            self.bound.pop(name, None)
        if len(names) != 1 or not value:
            return
        bound = self._dig(value[1:]) if value[0] == "dig" else self.of(value[0]) if len(value) == 1 else None
        if bound is not None:
            self.bound[names[0]] = bound


def values_read(template: Path) -> ValuesReads:
    reads = ValuesReads()
    text = re.sub(r"/\*.*?\*/", "", template.read_text(), flags=re.DOTALL)
    for action in ACTION.findall(text):
        tokens = TOKEN.findall(action)
        if tokens[:1] == ["define"]:
            reads.bound.clear()
        if tokens[:1] in (["range"], ["with"], ["if"], ["else"]):
            tokens = tokens[1:] if tokens[:1] != ["else"] else tokens[2:]
        reads.read(_groups(tokens))
    return reads


def admits(schema: dict[str, Any], path: ValuesPath) -> bool:
    """Whether values with something at `path` pass `schema` there ("*": whatever key the templates compute)."""
    if not path:
        return True
    key, rest = path[0], path[1:]
    for alternative in schema.get("anyOf", [schema]):
        types = alternative.get("type", [])
        if "object" not in (types if isinstance(types, list) else [types]):
            continue
        properties, others = alternative.get("properties", {}), alternative.get("additionalProperties", True)
        if key != "*" and key in properties:
            if admits(properties[key], rest):
                return True
        elif others is True or (others is not False and admits(others, rest)):
            return True
    return False


def test_every_key_the_library_chart_reads_is_in_the_schemas() -> None:
    """A key added to the library chart's templates but not to k8s/values_schema.py would be refused for every
    user who sets it: each path the templates read must be one the schema admits (global.*: the umbrella's too)."""
    paths: set[ValuesPath] = set()
    not_values: set[str] = set()
    for template in sorted((ROOT / "helm" / "shopmesh-lib" / "templates").glob("*.tpl")):
        reads = values_read(template)
        paths |= reads.paths
        not_values |= reads.not_values_seen
    # The extraction finds them by each form the templates use: bound maps, computed keys, hasKey, defaults.
    assert {
        ("resources",),
        ("global", "resources", "*"),
        ("global", "smtp", "host"),
        ("canary", "image", "tag"),
        ("global", "canary", "*", "image", "tag"),
        ("global", "database", "peers"),
        ("global", "httpApi", "image"),
        ("ingress", "traces"),
    } <= paths, sorted(paths)
    assert not_values == set(NOT_VALUES), "NOT_VALUES names a map no template digs into any more"
    schemas = [values_schema.schema(chart) for chart in SERVICES]
    umbrella = values_schema.schema(render.UMBRELLA)
    refused = [
        ".".join(path)
        for path in sorted(paths)
        if not all(admits(schema, path) for schema in schemas) or (path[0] == "global" and not admits(umbrella, path))
    ]
    assert refused == [], "read by helm/shopmesh-lib/templates, refused by k8s/values_schema.py's schema"
