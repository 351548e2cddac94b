"""Every chart renders and lints with the Helm v4 SDK for every value set; every rendered object is valid
against the Kubernetes 1.32 schemas in strict mode; checkov finds nothing; hadolint finds nothing."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from shopmesh_platform.topology import SERVICES

from .conftest import PINNED, PINNINGS, CheckovRun
from .k8skit import KUBERNETES_VERSION, ROOT, Docs, dockerfiles, render, tool

# Custom resources (Prometheus Operator, Istio, Linkerd): not in Kubernetes' own schemas.
CUSTOM_RESOURCE_GROUPS = {
    "monitoring.coreos.com",
    "security.istio.io",
    "networking.istio.io",
    "telemetry.istio.io",
    "policy.linkerd.io",
}
CASES = [(value_set, chart) for value_set in render.VALUE_SETS for chart in render.all_charts()]


@pytest.fixture(scope="module", autouse=True)
def _checkov_from_the_first_test(request: pytest.FixtureRequest) -> None:
    """checkov in the background from this file's first test on, when its test is to run: on the pytest-xdist
    worker that runs this file (tests/k8s/conftest.py starts it earlier in a run without workers)."""
    if any(item.name == "test_checkov_finds_nothing" for item in request.session.items):
        request.getfixturevalue("checkov_report")


def test_helm_sdk_is_helm_4() -> None:
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()


@pytest.mark.parametrize(("value_set", "chart"), CASES)
def test_chart_renders_every_object(rendered: dict[tuple[str, str], Docs], value_set: str, chart: str) -> None:
    docs = rendered[value_set, chart]
    names = SERVICES if chart == render.UMBRELLA else [chart]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name in names:
        expected = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "NetworkPolicy"}
        if "staging" in render.layer_names(value_set):
            expected |= {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
        for kind in expected:
            assert (kind, name) in kinds, f"{chart} ({value_set}) renders no {kind}/{name}"
        assert ("Pod", f"{name}-health-test") in kinds, f"{chart} ({value_set}) has no helm test pod for {name}"
    assert all(d["metadata"].get("namespace") == render.NAMESPACE for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize(("value_set", "chart"), CASES)
def test_helm_lint_reports_no_error(helm_dir: Path, value_set: str, chart: str) -> None:
    report = render.lint(helm_dir, chart, value_set)
    errors = [m for m in report["messages"] if m["severity"] >= 3] + list(report.get("errors") or [])
    assert not errors, errors


def test_library_chart_lints(helm_dir: Path) -> None:
    report = helm.lint(helm_dir / render.LIBRARY)
    assert not [m for m in report["messages"] if m["severity"] >= 3], report
    assert not report.get("errors"), report


def _unique_objects(render_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every rendered object once (the umbrella and a service chart alone render many identical ones)."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for path in sorted(render_dir.rglob("*.yaml")):
        for doc in render.documents(path.read_text()):
            seen.setdefault(json.dumps(doc, sort_keys=True), (str(path.relative_to(render_dir)), doc))
    return list(seen.values())


def test_every_object_validates_against_kubernetes_schemas_strict(
    render_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes-validate re-reads its JSON schemas for every object; read each file once.
    monkeypatch.setattr(kv_utils, "schema_contents", functools.lru_cache(maxsize=None)(kv_utils.schema_contents))
    failures = []
    objects = _unique_objects(render_dir)
    for where, doc in objects:
        if doc["apiVersion"].split("/")[0] in CUSTOM_RESOURCE_GROUPS:
            continue  # test_monitoring.py, test_mesh_policy.py, test_mesh_traces.py check them: their own schemas
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (kv_utils.ValidationError, kv_utils.SchemaNotFoundError) as exc:
            failures.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert len(objects) > 100
    assert not failures, "\n".join(failures)


def test_kubernetes_validate_rejects_an_unknown_field() -> None:
    """Strict mode is really on: an unexpected property fails."""
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "bogus": 1}, "data": {}}
    with pytest.raises(kv_utils.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def checkov_reports(checkov_report: CheckovRun) -> list[dict[str, Any]]:
    returncode, stdout, stderr = checkov_report.finished(timeout=600)
    assert returncode == 0, stderr[-3000:]
    reports = json.loads(stdout)
    return reports if isinstance(reports, list) else [reports]


def test_checkov_finds_nothing(checkov_report: CheckovRun) -> None:
    """One checkov run over every rendered set, the dev infra and the pinned renders (the test below): no
    failed check, and every skipped check carries its reason (the charts' `checkov.io/skip-*: ID=reason`
    annotations)."""
    reports = checkov_reports(checkov_report)
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    skipped = [c for r in reports for c in r["results"]["skipped_checks"]]
    unexplained = [
        f"{c['check_id']} {c['resource']}"
        for c in skipped
        if (c["check_result"].get("suppress_comment") or "No comment provided").strip() == "No comment provided"
    ]
    assert not unexplained, unexplained
    assert sum(r["summary"]["passed"] for r in reports) > 1000
    assert sum(r["summary"]["parsing_errors"] for r in reports) == 0


def test_checkov_finds_nothing_once_the_images_are_pinned(checkov_report: CheckovRun) -> None:
    """skaffold pins each service's image by its digest (image.digest), and the tag-only skip of CKV_K8S_43
    goes away with it. The gateway's pod has a second image, the edge's Envoy (httpApi.image, by tag unless
    given with its digest): pinning the service's image alone must leave a skip that says so, not a failed
    check; pinning both, none is needed. The gateway renders so pinned (conftest's PINNINGS) are in the
    session's checkov run, under /pinned/<pinning>/."""
    results = [r["results"] for r in checkov_reports(checkov_report)]

    def pinned(outcome: str) -> list[dict[str, Any]]:
        return [c for r in results for c in r[outcome] if c["file_path"].startswith(f"/{PINNED}/")]

    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in pinned("failed_checks")]
    assert not failed, "\n".join(failed)
    digest_skips = {c["file_path"].split("/")[2] for c in pinned("skipped_checks") if c["check_id"] == "CKV_K8S_43"}
    assert digest_skips == {"service"}, digest_skips
    assert {c["file_path"].split("/")[2] for c in pinned("passed_checks")} == set(PINNINGS)
    assert len(pinned("passed_checks")) > 100


def test_dockerfiles_exist_and_follow_the_template() -> None:
    assert not dockerfiles.problems(), dockerfiles.problems()


def test_an_image_with_no_environment_of_its_own_is_refused_not_written_with_workdir_inside_its_env() -> None:
    """The template's ENV instruction ends in a line continuation: an image filling nothing after it would have
    its WORKDIR read as a variable, a Dockerfile hadolint may pass and the image gets no working directory."""
    with pytest.raises(ValueError, match="no environment of its own"):
        dockerfiles.fill(dataclasses.replace(dockerfiles.LOADGEN, environment=""))


def test_a_service_slot_left_in_the_load_generators_dockerfile_is_refused() -> None:
    with pytest.raises(ValueError, match="@SERVICE@"):
        dockerfiles.loadgen_dockerfile(dataclasses.replace(dockerfiles.LOADGEN, about="for @SERVICE@"))


def test_hadolint_finds_nothing() -> None:
    files = sorted(str(p) for p in (ROOT / "services").glob("*/Dockerfile"))
    assert files, "no Dockerfile under services/"
    files.append(str(ROOT / "libs" / "loadgen" / "Dockerfile"))
    proc = subprocess.run([tool("hadolint"), "--no-color", *files], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not proc.stdout.strip(), proc.stdout


def test_hadolint_is_really_linting(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install -y curl\n")
    proc = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout


def test_render_out_keeps_what_it_did_not_write(helm_dir: Path, tmp_path: Path) -> None:
    """`k8s/render.py render --out DIR` ("write every rendered manifest to a folder for review") writes the
    manifests into DIR. Pointed at a folder that holds something else (`--out .`, `--out ~/review`, a typo),
    it must not delete that: today it empties the folder first (shutil.rmtree), so `--out .` from the
    repository root removes the checkout. Only what a render wrote (<value set>/, infra/) may be replaced,
    or a folder it did not write refused."""
    out = tmp_path / "review"
    out.mkdir()
    notes = out / "notes.txt"
    notes.write_text("mine, not the render's\n")
    # Refusing a folder the render did not write is a fix too.
    with contextlib.suppress(ValueError, FileExistsError):
        render.write_all(helm_dir, out)
    assert notes.is_file(), "k8s/render.py render --out deleted a file it did not write"
