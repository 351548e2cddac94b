"""What a pod's service reads at start, from what the chart renders for it: its settings as
`python -m shopmesh_<service>` loads them (the ConfigMap over the image's ENV, the Secrets' files), and the
values the chart refuses because the service would refuse them (exit 2 in every pod) or because the rest of
the pod is built on the chart's own value (env: entries for the variables the chart sets)."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any, get_args

import helm_python as helm
import pytest
import yaml
from pydantic import SecretStr

from shopmesh_chassis.config import ConfigError, ServiceSettings, load_settings
from shopmesh_platform.topology import SERVICES

from .k8skit import ROOT, Docs, dockerfiles, find, objects_of, render

# Fakes the Secrets' files stand for, where the service checks their form (any other file holds "x").
SECRET_FILES = {"IDEMPOTENCY_FINGERPRINT_KEY": "k" * 40}


def image_env() -> dict[str, str]:
    """The variables the services' image sets (their Dockerfile's last ENV), under the ConfigMap's."""
    text = dockerfiles.dockerfile("gateway")
    last = text[text.rindex("\nENV ") + len("\nENV ") :]
    assignments = re.match(r"(?:[^\n]*\\\n)*[^\n]*", last)
    assert assignments is not None
    return dict(pair.split("=", 1) for pair in assignments.group(0).replace("\\\n", " ").split())


def settings_class(service: str) -> type[ServiceSettings]:
    cls: type[ServiceSettings] = getattr(
        importlib.import_module(f"shopmesh_{service}.settings"), f"{service.capitalize()}Settings"
    )
    return cls


def pod_environment(docs: Docs, service: str, secrets: Path) -> dict[str, str]:
    """The service container's environment as the kubelet gives it (image ENV, then envFrom the ConfigMap), its
    Secrets' files written to `secrets` (SECRETS_DIR pointed there)."""
    env = image_env() | find(docs, "ConfigMap", service)["data"]
    pod = find(docs, "Deployment", service)["spec"]["template"]["spec"]
    secrets.mkdir(parents=True)
    for volume in pod["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            for item in source["secret"]["items"]:
                fake = {"DATABASE_URL": f"postgresql://{service}:pw@postgresql.shopmesh-infra:5432/{service}"}
                (secrets / item["path"]).write_text((fake | SECRET_FILES).get(item["path"], "x"))
    if "SECRETS_DIR" in env:
        env["SECRETS_DIR"] = str(secrets)
    return env


def loaded(service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The service's settings from `env` alone, as its process would load them."""
    for key in list(os.environ):
        if key.isupper() and key not in ("PATH", "PYTHONPATH", "HOME"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(settings_class(service))


@pytest.mark.parametrize("value_set", ["default", "staging+istio"])
def test_each_service_starts_with_the_settings_its_pod_is_given(
    helm_dir: Path, value_set: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = render.render(helm_dir, "shopmesh", value_set).values()
    docs = [doc for text in texts for doc in render.documents(text)]
    for service in SERVICES:
        settings = loaded(service, pod_environment(docs, service, tmp_path / service), monkeypatch)
        pod = find(docs, "Deployment", service)["spec"]["template"]["spec"]
        # It listens where the probes, the Service and the policies look for it.
        assert settings.grpc_port == pod["containers"][0]["readinessProbe"]["grpc"]["port"], service
        assert (settings.grpc_host, settings.metrics_host) == ("0.0.0.0", "0.0.0.0"), service
        # Every service it calls is given an address (unset, it stays 127.0.0.1: the pod itself).
        for field in type(settings).model_fields:
            if field.endswith("_address"):
                assert "127.0.0.1" not in str(getattr(settings, field)), (service, field)


# The umbrella's staging environment with every Secret a pod may read as a file: NATS' and SMTP's too.
WITH_EVERY_SECRET: dict[str, Any] = {
    "global": {
        "nats": {"existingSecret": "nats-credentials"},
        "smtp": {"existingSecret": "smtp-credentials"},
    }
}


def variables_the_chart_sets(docs: Docs, service: str) -> list[str]:
    """The variables of `service`'s pod that the chart renders: its ConfigMap's and its Secrets' files."""
    pod = find(docs, "Deployment", service)["spec"]["template"]["spec"]
    files = [
        item["path"]
        for volume in pod["volumes"]
        for source in volume.get("projected", {}).get("sources", [])
        for item in source["secret"]["items"]
    ]
    # Not the service chart's own env: entries (the gateway's TRUSTED_PROXIES), which the library chart does not set.
    own = yaml.safe_load((ROOT / "helm" / service / "values.yaml").read_text()).get("env") or {}
    return sorted({*find(docs, "ConfigMap", service)["data"], *files} - set(own))


@pytest.mark.parametrize(
    ("service", "among_them"),
    [
        ("orders", {"DATABASE_URL", "IDEMPOTENCY_FINGERPRINT_KEY", "NATS_URL", "SECRETS_DIR", "PAYMENTS_ADDRESS"}),
        ("notifications", {"SMTP_HOST", "SMTP_PASSWORD", "NATS_URL", "DATA_DIR", "OTEL_TRACES_SAMPLER_RATIO"}),
        ("gateway", {"GRPC_PORT", "METRICS_PORT", "DRAIN_DELAY_SECONDS", "LOG_LEVEL", "CATALOG_ADDRESS"}),
    ],
)
def test_an_env_entry_for_any_variable_the_chart_sets_fails_the_render_naming_it(
    helm_dir: Path, service: str, among_them: set[str]
) -> None:
    """A service chart's env: is for the service's own settings: one that replaced a variable the chart sets
    would run the pod against what the rest of it was built on (ports, drain, addresses, Secrets)."""
    values = render.merged_values(render.values_for("staging+istio"), WITH_EVERY_SECRET)
    docs = objects_of(helm_dir, service, values)
    variables = variables_the_chart_sets(docs, service)
    assert among_them <= set(variables), variables
    for variable in variables:
        with pytest.raises(Exception, match=rf"env\.{variable} for {service}: "):
            objects_of(helm_dir, service, render.merged_values(values, {"env": {variable: "1"}}))


@pytest.mark.parametrize(
    ("variable", "setting"),
    [
        ("DRAIN_DELAY_SECONDS", "drain.drainDelaySeconds"),
        ("SHUTDOWN_GRACE_SECONDS", "drain.shutdownGraceSeconds"),
        ("SHUTDOWN_HOOKS_BUDGET_SECONDS", "drain.shutdownHooksBudgetSeconds"),
        ("LOG_LEVEL", "logLevel"),
        ("DATABASE_POOL_SIZE", "database.pool.size"),
        ("DATABASE_MAX_OVERFLOW", "database.pool.maxOverflow"),
    ],
)
def test_an_env_entry_for_a_drain_log_or_pool_variable_fails_the_render_naming_the_value_to_set(
    helm_dir: Path, variable: str, setting: str
) -> None:
    """SHUTDOWN_GRACE_SECONDS=60 through env: escaped the drain's checks (the stop must fit
    terminationGracePeriodSeconds) that drain.shutdownGraceSeconds: 60 fails: a 126 s stop in a 40 s grace.
    DATABASE_POOL_SIZE=60 likewise escaped the connection budget's."""
    values = {"global": {"database": {"mode": "postgres"}}, "env": {variable: "60"}}
    with pytest.raises(Exception, match=rf"env\.{variable} for catalog: .* Set {re.escape(setting)}"):
        objects_of(helm_dir, "catalog", values)


@pytest.mark.parametrize(("variable", "port"), [("GRPC_PORT", 50051), ("METRICS_PORT", 9464)])
def test_an_env_entry_for_a_port_fails_the_render(helm_dir: Path, variable: str, port: int) -> None:
    """The service would listen on the entry's port, its probes, Service and policies on the chart's: never
    ready, with no hint why."""
    with pytest.raises(Exception, match=rf'env\.{variable} for catalog: the chart sets {variable} itself, to "{port}"'):
        objects_of(helm_dir, "catalog", {"env": {variable: "50099"}})


@pytest.mark.parametrize("service", ["catalog", "gateway"])
def test_an_env_entry_for_migrate_only_fails_the_render(helm_dir: Path, service: str) -> None:
    """MIGRATE_ONLY=true in the ConfigMap reached the app container too, which migrated (or, owning no
    database, refused it) and exited at every start: a crash loop. The `migrate` init container sets it alone."""
    with pytest.raises(Exception, match=rf"env\.MIGRATE_ONLY for {service}: .* crash loop.* remove the entry"):
        objects_of(helm_dir, service, {"env": {"MIGRATE_ONLY": "true"}})


def test_an_env_entry_for_a_secrets_file_fails_the_render_naming_the_secret(helm_dir: Path) -> None:
    """The environment wins over SECRETS_DIR's files: DATABASE_URL in values would replace the Secret's, a
    password in a ConfigMap."""
    values = {"global": {"database": {"mode": "postgres"}}, "env": {"DATABASE_URL": "postgresql://u:pw@db/catalog"}}
    with pytest.raises(
        Exception, match=r"env\.DATABASE_URL for catalog: .* the Secret catalog-database, key DATABASE_URL"
    ):
        objects_of(helm_dir, "catalog", values)


# The settings a Secret holds (the chart mounts them as files) → the value naming that Secret. Their values
# in an env: entry would sit in the service's ConfigMap.
SECRET_SETTINGS = {
    "DATABASE_URL": "database.existingSecret",
    "IDEMPOTENCY_FINGERPRINT_KEY": "idempotency.existingSecret",
    "NATS_URL": "global.nats.existingSecret",
    "SMTP_USERNAME": "global.smtp.existingSecret",
    "SMTP_PASSWORD": "global.smtp.existingSecret",
}


def test_every_secret_setting_of_the_services_is_one_the_chart_keeps_out_of_env() -> None:
    # A SecretStr setting a service adds, unknown to the chart, would be let through env: to its ConfigMap.
    for service in SERVICES:
        for name, field in settings_class(service).model_fields.items():
            if field.annotation is SecretStr or SecretStr in get_args(field.annotation):
                assert name.upper() in SECRET_SETTINGS, (service, name)


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        # The default values: SQLite, no NATS or SMTP Secret, so none of these is a Secret's file.
        ("catalog", "DATABASE_URL"),
        ("orders", "IDEMPOTENCY_FINGERPRINT_KEY"),
        ("orders", "NATS_URL"),  # catalog publishes no events: its schema refuses NATS_URL outright
        ("notifications", "SMTP_USERNAME"),
        ("notifications", "SMTP_PASSWORD"),
    ],
)
def test_an_env_entry_for_a_secret_fails_the_render_naming_the_secret_value(
    helm_dir: Path, service: str, variable: str
) -> None:
    """Without the Secret the chart would mount, the entry went into the ConfigMap: a password there."""
    with pytest.raises(
        Exception, match=rf"env\.{variable} for {service}: .*{re.escape(SECRET_SETTINGS[variable])}"
    ) as refused:
        objects_of(helm_dir, service, {"env": {variable: "s3cret-value-0123456789abcdef0123456789"}})
    assert "s3cret" not in str(refused.value)


def test_a_service_setting_of_its_own_still_reaches_the_pod_through_env(
    helm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = objects_of(helm_dir, "catalog", {"env": {"GRPC_MAX_CONCURRENT_RPCS": 64}})
    settings = loaded("catalog", pod_environment(docs, "catalog", tmp_path / "secrets"), monkeypatch)
    assert settings.grpc_max_concurrent_rpcs == 64


@pytest.mark.parametrize(
    ("values", "level", "log_format"),
    [
        ({"logLevel": "debug"}, "DEBUG", "json"),
        ({"global": {"logLevel": "warning", "logFormat": "TEXT"}}, "WARNING", "text"),
        ({"logLevel": "ERROR", "logFormat": "text"}, "ERROR", "text"),
    ],
)
def test_a_log_level_or_format_in_either_case_starts_the_service_with_it(
    helm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any], level: str, log_format: str
) -> None:
    """`debug` rendered as written, and every pod exited 2 (the chassis takes DEBUG only)."""
    docs = objects_of(helm_dir, "catalog", values)
    try:
        settings = loaded("catalog", pod_environment(docs, "catalog", tmp_path / "secrets"), monkeypatch)
    except ConfigError as exc:
        pytest.fail(f"the chart rendered {values} and the service refuses it at start: {exc}")
    assert (settings.log_level, settings.log_format) == (level, log_format)


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"logLevel": "TRACE"}, "/logLevel"),
        ({"global": {"logLevel": "WARN"}}, "/global/logLevel"),
        ({"logFormat": "logfmt"}, "/logFormat"),
        ({"drain": {"shutdownGraceSeconds": -1}}, "/drain/shutdownGraceSeconds"),
        ({"global": {"otel": {"samplerRatio": 1.5}}}, "/global/otel/samplerRatio"),
        ({"global": {"smtp": {"port": 0}}}, "/global/smtp/port"),
    ],
)
def test_a_setting_the_service_would_refuse_at_start_is_refused_by_the_schema(
    helm_dir: Path, values: dict[str, Any], path: str
) -> None:
    """The values schema takes these from the services' settings types (k8s/values_schema.py), so the chart
    refuses what every pod would exit 2 on, naming the key, before anything is installed."""
    with pytest.raises(helm.errors.HelmValuesError, match=rf"- at '{re.escape(path)}'"):
        objects_of(helm_dir, "catalog", values)
