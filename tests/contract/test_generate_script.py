"""libs/contracts/generate.py (`make proto`) as a contributor meets it: a contract mistake is one line naming it,
and a generation run alone says the gateway chart's copies are still to write."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shopmesh_platform.openapi import ContractError

SCRIPT = Path(__file__).resolve().parents[2] / "libs" / "contracts" / "generate.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shopmesh_contracts_generate", SCRIPT)
    assert spec is not None, SCRIPT
    assert spec.loader is not None, SCRIPT
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_contract_mistake_is_one_error_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    generate = load()
    mistake = "shopmesh.gateway.v1.ShopService.ListCategories: no (shopmesh.common.v1.access) option"

    def refuse(out: Path) -> int:
        raise ContractError(mistake)

    monkeypatch.setattr(generate, "generate", refuse)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    assert generate.main() == 1
    assert capsys.readouterr().err == f"error: {mistake}\n"


def test_a_generation_says_k8s_http_api_must_run_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generate = load()

    def write(out: Path) -> int:
        (out / "shopmesh").mkdir(parents=True)
        return 1

    monkeypatch.setattr(generate, "generate", write)
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    monkeypatch.setattr(generate, "PACKAGE", tmp_path / "shopmesh")
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])
    assert generate.main() == 0
    assert "k8s/http_api.py" in capsys.readouterr().out
