"""The PostgreSQL connections the services' pods may hold fit what their server accepts, and a release whose
pools would not fails to render, naming the numbers. Staging's pods could once open 980 connections against
k8s/infra's PostgreSQL's 97: new pods were refused (SQLSTATE 53300), migrations failed, pods crash-looped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shopmesh_chassis.config import DatabaseSettings, load_settings
from shopmesh_chassis.db import Database
from shopmesh_platform.topology import SERVICES

from .k8skit import ROOT, Docs, objects_of, render

SUPERUSER_RESERVED = 3  # PostgreSQL's superuser_reserved_connections: not for the services' users
OWNERS = sorted(name for name in SERVICES if SERVICES[name].has_database)
# One service's share at staging's values: 6 replicas, a rolling update's surge pod and the 3 old pods it may
# have draining at once (global.database.drainingPods), 4 connections each.
STAGING_SHARE = "(maxReplicas 6 + 1 surge + 3 draining) pods x (pool size 2 + maxOverflow 2) = 40"
# Where a refusal sends its reader: the section that explains the budget.
SECTION = 'docs/kubernetes.md, "PostgreSQL connections"'


def infra_postgresql() -> dict[str, Any]:
    """k8s/infra's PostgreSQL container (values-staging.yaml's server, for rehearsing on kind)."""
    (statefulset,) = [
        d
        for d in yaml.safe_load_all((ROOT / "k8s" / "infra" / "postgresql.yaml").read_text())
        if d and d["kind"] == "StatefulSet"
    ]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return dict(container)


def infra_max_connections() -> int:
    """The max_connections k8s/infra's PostgreSQL runs with."""
    container = infra_postgresql()
    found = re.fullmatch(r"max_connections=(\d+)", container["args"][container["args"].index("-c") + 1])
    assert found, container["args"]
    return int(found.group(1))


def pool_of(configmap: dict[str, str]) -> tuple[int, int]:
    """The pool the chassis opens from a pod's ConfigMap: (kept, most) connections."""
    settings = load_settings(
        DatabaseSettings,
        service_name=configmap["SERVICE_NAME"],
        database_url="postgresql://u:p@localhost:1/x",
        **{key.lower(): value for key, value in configmap.items() if key.startswith("DATABASE_")},
    )
    pool: Any = Database.from_settings(settings).postgres_engine.pool
    return pool.size(), pool.size() + pool._max_overflow


def staging(helm_dir: Path, **database: Any) -> Docs:
    values = render.merged_values(render.values_for("staging+istio", helm_dir), {"global": {"database": database}})
    return objects_of(helm_dir, "shopmesh", values)


def test_staging_pools_fit_the_postgresql_k8s_infra_runs(helm_dir: Path) -> None:
    docs = staging(helm_dir)
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d["spec"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    surge = {
        d["metadata"]["name"]: d["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    database = render.merged_values(
        yaml.safe_load((helm_dir / "shopmesh" / "values.yaml").read_text()),
        render.values_for("staging+istio", helm_dir),
    )["global"]["database"]
    kept_at_min = most_at_max = 0
    for owner in OWNERS:
        kept, most = pool_of(configmaps[owner])
        kept_at_min += (hpas[owner]["minReplicas"] + surge[owner]) * kept
        # A rolling update's surge pod, and the old pods it deleted that still hold their pools as they drain.
        beyond = min(surge[owner] + database["drainingPods"], hpas[owner]["maxReplicas"])
        most_at_max += (hpas[owner]["maxReplicas"] + beyond) * most
    usable = infra_max_connections() - SUPERUSER_RESERVED
    budget = database["maxConnections"]
    assert kept_at_min <= most_at_max <= budget <= usable, (kept_at_min, most_at_max, budget, usable)


# What one PostgreSQL connection costs the server: its backend process, after the services' simple statements
# (2.0 MiB private at the median over 100 connections to PostgreSQL 15, 2026-12-05), and what the server
# holds whatever its connections: shared_buffers (128 MiB by default) and its own processes.
MIB_PER_CONNECTION = 2
MIB_OF_THE_SERVER = 128 + 30


def test_k8s_infra_postgresql_has_memory_for_every_connection_it_accepts() -> None:
    """max_connections went from 100 to 300 while the memory limit stayed at 512Mi, sized for 100: all of
    them open is ~760 MiB, and the kernel kills the server (every service's connections with it) past the
    limit, the rollout it was raised for being the moment they are all open."""
    container = infra_postgresql()
    limit = container["resources"]["limits"]["memory"]
    found = re.fullmatch(r"(\d+)(Mi|Gi)", limit)
    assert found, limit
    limit_mib = int(found.group(1)) * (1024 if found.group(2) == "Gi" else 1)
    assert infra_max_connections() * MIB_PER_CONNECTION + MIB_OF_THE_SERVER <= limit_mib, limit


def test_pools_over_the_budget_fail_the_umbrellas_render_naming_each_services_share(helm_dir: Path) -> None:
    # Staging's 280 (7 services x 10 pods x 4) against less: each share alone fits, only their sum does not.
    with pytest.raises(Exception, match="may open 280 connections together, more than its 150") as refused:
        staging(helm_dir, maxConnections=150)
    for owner in OWNERS:
        assert f"{owner} {STAGING_SHARE}" in str(refused.value)
    assert SECTION in str(refused.value)


def test_the_default_pools_at_stagings_replicas_do_not_fit_a_stock_postgresql(helm_dir: Path) -> None:
    """The pools as the chassis sizes them by default (4 + 2), at staging's replicas, against the budget of a
    PostgreSQL left at its 100 connections: refused at render time, not found in a crash loop."""
    with pytest.raises(Exception, match="may open 420 connections together, more than its 97"):
        staging(helm_dir, pool={"size": 4, "maxOverflow": 2}, maxConnections=97)


def test_a_service_chart_alone_fails_when_its_own_pods_exceed_the_budget(helm_dir: Path) -> None:
    values = render.merged_values(
        render.values_for("staging+istio", helm_dir), {"global": {"database": {"maxConnections": 20}}}
    )
    refusal = f"database.pool for catalog: {STAGING_SHARE} connections, more than global.database.maxConnections (20)"
    with pytest.raises(Exception, match=re.escape(refusal)) as refused:
        objects_of(helm_dir, "catalog", values)
    assert SECTION in str(refused.value)


def test_a_canarys_pods_count_toward_the_budget(helm_dir: Path) -> None:
    values = render.merged_values(
        render.values_for("staging+istio", helm_dir),
        {"global": {"mesh": "istio", "database": {"maxConnections": 36}, "canary": {"catalog": {"enabled": True}}}},
    )
    # 10 stable pods and a canary's 1 + 1 (its surge pod, then its old one draining), 4 connections each: 48
    # fits, 47 does not.
    values["global"]["database"]["maxConnections"] = 48
    objects_of(helm_dir, "catalog", values)
    values["global"]["database"]["maxConnections"] = 47
    formula = (
        "(maxReplicas 6 + 1 surge + 3 draining + canary 1 + 1 surge or draining) pods x (pool size 2 + maxOverflow 2)"
    )
    with pytest.raises(Exception, match=re.escape(f"{formula} = 48")):
        objects_of(helm_dir, "catalog", values)


def test_old_pods_draining_through_a_rolling_update_count_toward_the_budget(helm_dir: Path) -> None:
    """A rolling update deletes an old pod once its replacement is ready and starts the next one, while the
    deleted pod keeps its pool open through its drain: counted at 6 + 1 surge alone, 28 passed where 40 may be
    open."""
    values = render.merged_values(
        render.values_for("staging+istio", helm_dir), {"global": {"database": {"maxConnections": 39}}}
    )
    with pytest.raises(Exception, match=re.escape(f"database.pool for catalog: {STAGING_SHARE} connections")):
        objects_of(helm_dir, "catalog", values)
    # The allowance is the service's to give: its own wins over global's.
    values["database"] = {"drainingPods": 1}
    refusal = "(maxReplicas 6 + 1 surge + 1 draining) pods x (pool size 2 + maxOverflow 2) = 32 connections"
    values["global"]["database"]["maxConnections"] = 31
    with pytest.raises(Exception, match=re.escape(refusal)):
        objects_of(helm_dir, "catalog", values)
    values["global"]["database"]["maxConnections"] = 32
    objects_of(helm_dir, "catalog", values)


@pytest.mark.parametrize(
    ("replicas", "pods", "beyond"),
    [(1, 2, "1 surge or draining"), (3, 6, "3 surge or draining"), (4, 8, "1 surge + 3 draining")],
)
def test_the_pods_beyond_the_replicas_are_never_more_than_the_replicas(
    helm_dir: Path, replicas: int, pods: int, beyond: str
) -> None:
    """Only old pods drain, and the surge pod runs only while an old one does: one replica is 2 pods through
    a rolling update (its new one, then its old one draining), so the defaults still fit a stock PostgreSQL."""
    values = {
        "global": {"database": {"mode": "postgres", "maxConnections": pods * 6 - 1}},
        "replicaCount": replicas,
    }
    refusal = f"(replicaCount {replicas} + {beyond}) pods x (pool size 4 + maxOverflow 2) = {pods * 6} connections"
    with pytest.raises(Exception, match=re.escape(refusal)):
        objects_of(helm_dir, "catalog", values)
    values["global"]["database"]["maxConnections"] = pods * 6
    objects_of(helm_dir, "catalog", values)


@pytest.mark.parametrize(
    ("pool", "refusal"),
    [
        (
            {"size": 1, "maxOverflow": 0},
            r"database\.pool for catalog: size \(1\) \+ maxOverflow \(0\) must be at least 2",
        ),
        ({"size": 0, "maxOverflow": 4}, r"/database/pool/size.*minimum"),
        # The chassis' own limits (DatabaseSettings' le=1000), which the schema takes from it.
        ({"size": 1001, "maxOverflow": 0}, r"/database/pool/size.*maximum"),
        ({"size": 4, "maxOverflow": 1001}, r"/database/pool/maxOverflow.*maximum"),
    ],
    ids=["one-in-all", "none-kept", "size-over-the-chassis-limit", "overflow-over-the-chassis-limit"],
)
def test_a_pool_the_chassis_would_refuse_fails_the_render(helm_dir: Path, pool: dict[str, int], refusal: str) -> None:
    with pytest.raises(Exception, match=refusal):
        objects_of(
            helm_dir, "catalog", {"global": {"database": {"mode": "postgres", "pool": pool, "maxConnections": 10000}}}
        )


def test_each_postgresql_pods_configmap_gives_the_chassis_its_pool(helm_dir: Path) -> None:
    docs = staging(helm_dir, pool={"size": 3, "maxOverflow": 1}, maxConnections=1000)
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    assert {owner: pool_of(configmaps[owner]) for owner in OWNERS} == dict.fromkeys(OWNERS, (3, 4))


@pytest.mark.parametrize(
    "canaries",
    [{"catalog": {"enabled": True, "replicaCount": 2}}, {"catalog": {"enabled": True}, "orders": {"enabled": True}}],
    ids=["one-canary-of-two-pods", "two-canaries"],
)
def test_staging_fits_one_canary_pod_at_a_time(helm_dir: Path, canaries: dict[str, Any]) -> None:
    """What docs/kubernetes.md tells a staging operator: 280 stable connections and one canary pod's 2 x 4 fit
    the 290; a second pod, in the same canary or another's, does not (and a one-pod canary has no disruption
    budget: the doc's consequence)."""
    one = render.merged_values(
        render.values_for("staging+istio", helm_dir), {"global": {"canary": {"catalog": {"enabled": True}}}}
    )
    objects_of(helm_dir, "shopmesh", one)
    more = render.merged_values(render.values_for("staging+istio", helm_dir), {"global": {"canary": canaries}})
    with pytest.raises(Exception, match="may open 296 connections together, more than its 290"):
        objects_of(helm_dir, "shopmesh", more)
