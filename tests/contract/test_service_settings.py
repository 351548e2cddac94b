"""Every service's settings are held to the chassis' bounds: a port that cannot exist stops startup with one
line naming the variable (a service once redeclared GRPC_PORT as a plain int: 70000 served on 4464)."""

from __future__ import annotations

import importlib
import inspect

import pytest

from shopmesh_chassis.config import ConfigError, ServiceSettings, load_settings
from shopmesh_platform.topology import SERVICES


def settings_class(module: str) -> type[ServiceSettings]:
    namespace = importlib.import_module(f"{module}.settings")
    (found,) = [
        value
        for value in vars(namespace).values()
        if inspect.isclass(value) and issubclass(value, ServiceSettings) and value.__module__ == namespace.__name__
    ]
    return found


@pytest.mark.parametrize("service", sorted(SERVICES))
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GRPC_PORT", "70000"),
        ("GRPC_PORT", "-1"),
        # -1 turns the metrics endpoint off; any other negative number is a mistake, not "off".
        ("METRICS_PORT", "-7"),
        ("METRICS_PORT", "70000"),
        ("SERVICE_NAME", "Cat Alog"),
    ],
)
def test_a_value_out_of_the_chassis_bounds_stops_startup_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, service: str, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^invalid configuration: {variable}="):
        load_settings(settings_class(SERVICES[service].module))
