"""No public HTTP route recorded in http_routes.json was removed or changed, nor its access (http_routes.py says
why `buf breaking` cannot tell), and every route is recorded, so the next change to it is caught."""

from __future__ import annotations

from .http_routes import COMMAND, broken_routes, current_routes, recorded_routes


def test_no_recorded_route_or_access_was_removed_or_changed() -> None:
    broken = broken_routes(recorded_routes(), current_routes())
    assert not broken, "routes of the public API removed or changed, breaking their HTTP clients:\n" + "\n".join(broken)


def test_every_route_is_recorded() -> None:
    unrecorded = sorted(current_routes().keys() - recorded_routes().keys())
    assert not unrecorded, f"routes not recorded in tests/contract/http_routes.json: {unrecorded}; run `{COMMAND}`"


LOGIN = {"post": "/v1/login", "body": "*", "access": "ACCESS_PUBLIC"}


def test_a_changed_path_a_changed_access_and_a_removed_route_are_each_found() -> None:
    recorded = {"Login": LOGIN, "Register": {**LOGIN, "post": "/v1/users"}, "SignOut": LOGIN}
    current = {"Login": {**LOGIN, "post": "/v1/signin"}, "Register": {**LOGIN, "post": "/v1/users", "access": "X"}}

    assert broken_routes(recorded, current) == [
        f"Login: {LOGIN} became {current['Login']}",
        f"Register: {recorded['Register']} became {current['Register']}",
        f"SignOut: {LOGIN} removed",
    ]


def test_a_new_route_is_no_break() -> None:
    assert broken_routes({"Login": LOGIN}, {"Login": LOGIN, "Refresh": {**LOGIN, "post": "/v1/refresh"}}) == []
