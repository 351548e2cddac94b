"""How the shoppers read the edge's error answers (docs/http-api.md, "Errors"): which settle a checkout, what a
PRICE_CHANGED asks them to pay, how long a "come back later" asks them to wait."""

from __future__ import annotations

from shopmesh_loadgen.answers import ERROR_INFO, RETRY_INFO, refusal

DECLINED = {
    "code": 9,
    "message": "Your card was declined.",
    "details": [{"@type": ERROR_INFO, "reason": "CARD_DECLINED", "domain": "shopmesh.orders", "metadata": {}}],
}


def test_a_declined_card_settles_the_checkout() -> None:
    declined = refusal(400, DECLINED)
    assert (declined.settles_checkout, declined.reason, declined.new_total_minor) == (True, "CARD_DECLINED", None)


def test_an_invalid_request_is_no_answer_of_the_shop() -> None:
    invalid = refusal(400, {"code": 3, "message": "invalid request", "details": []})
    assert not invalid.settles_checkout


def test_price_changed_names_the_total_to_agree_to() -> None:
    info = {
        "@type": ERROR_INFO,
        "reason": "PRICE_CHANGED",
        "metadata": {"current_total_minor": "2600", "currency": "USD"},
    }
    changed = refusal(400, {"code": 9, "details": [info]})
    assert (changed.settles_checkout, changed.new_total_minor) == (True, 2600)


def test_a_rate_limit_says_how_long_to_wait() -> None:
    limited = refusal(429, {"code": 8, "details": [{"@type": RETRY_INFO, "retryDelay": "1.500s"}]})
    assert (limited.retry_delay, limited.settles_checkout) == (1.5, False)


def test_a_dependency_unavailable_names_the_dependency_in_its_error_key() -> None:
    """Locust groups failures by this text: "503 DEPENDENCY_UNAVAILABLE" alone left an aborted inventory looking
    like any other dependency's outage."""
    info = {"@type": ERROR_INFO, "reason": "DEPENDENCY_UNAVAILABLE", "metadata": {"dependency": "inventory"}}
    assert str(refusal(503, {"code": 14, "details": [info]})) == "503 DEPENDENCY_UNAVAILABLE (inventory)"
    unnamed = {"@type": ERROR_INFO, "reason": "DEPENDENCY_UNAVAILABLE", "metadata": {}}
    assert str(refusal(503, {"code": 14, "details": [unnamed]})) == "503 DEPENDENCY_UNAVAILABLE"


def test_a_body_that_is_no_status_leaves_only_the_http_status() -> None:
    assert str(refusal(502, "<html>Bad Gateway</html>")) == "502"
    assert refusal(503, {"code": "UNAVAILABLE", "details": "none"}).code == 0
