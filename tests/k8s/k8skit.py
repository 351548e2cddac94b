"""Helpers of the Kubernetes delivery tests: the k8s/ scripts (render, dockerfiles, dashboards, http_api), tools,
lookups."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
