"""notifications's settings are held to the chassis' bounds: a port that cannot exist stops startup with one line."""

from __future__ import annotations

import pytest

from shopmesh_chassis.config import ConfigError, load_settings
from shopmesh_notifications.settings import NotificationsSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GRPC_PORT", "70000"),
        ("GRPC_PORT", "-1"),
        # -1 turns the metrics endpoint off; any other negative number is a mistake, not "off".
        ("METRICS_PORT", "-7"),
        ("METRICS_PORT", "70000"),
    ],
)
def test_a_port_out_of_range_stops_startup_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"^invalid configuration: {variable}="):
        load_settings(NotificationsSettings)
