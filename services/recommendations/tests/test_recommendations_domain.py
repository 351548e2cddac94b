"""The recommendation rules without I/O: request validation, what an order teaches, ranking."""

from __future__ import annotations

import pytest

from shopmesh_chassis.errors import InvalidArgument
from shopmesh_recommendations.domain.copurchase import purchase_effects
from shopmesh_recommendations.domain.models import ConfirmedOrder
from shopmesh_recommendations.domain.ranking import Candidate, by_count, by_popularity, interleave, rank
from shopmesh_recommendations.domain.validation import (
    DEFAULT_MAX_RESULTS,
    MAX_RESULTS,
    ProductSubject,
    UserSubject,
    validate_request,
)


def violations(error: pytest.ExceptionInfo[InvalidArgument]) -> list[tuple[str, str]]:
    return [(v.field, v.reason) for v in error.value.violations]


# --- validation -----------------------------------------------------------------------------------


def test_a_product_subject_with_zero_max_results_gets_the_default_of_five() -> None:
    query = validate_request("prod_chef_knife", None, 0)
    assert query.subject == ProductSubject("prod_chef_knife")
    assert query.limit == DEFAULT_MAX_RESULTS == 5


def test_a_user_subject_is_accepted() -> None:
    assert validate_request(None, "usr_1", 3).subject == UserSubject("usr_1")


def test_max_results_above_twenty_is_coerced_to_twenty() -> None:
    assert validate_request("prod_a", None, 500).limit == MAX_RESULTS == 20


def test_no_subject_is_invalid_naming_the_oneof() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_request(None, None, 5)
    assert caught.value.reason == "VALIDATION_FAILED"
    assert violations(caught) == [("subject", "REQUIRED")]


@pytest.mark.parametrize(("product_id", "user_id", "field"), [("", None, "product_id"), (None, "", "user_id")])
def test_an_empty_subject_id_is_invalid(product_id: str | None, user_id: str | None, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_request(product_id, user_id, 5)
    assert violations(caught) == [(field, "REQUIRED")]


def test_an_id_longer_than_64_characters_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_request("p" * 65, None, 5)
    assert violations(caught) == [("product_id", "TOO_LONG")]


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_request("", None, -1)
    assert violations(caught) == [("product_id", "REQUIRED"), ("max_results", "OUT_OF_RANGE")]


# --- what an order teaches ------------------------------------------------------------------------


def test_an_order_counts_every_pair_of_distinct_products_in_both_directions() -> None:
    effects = purchase_effects(ConfirmedOrder("ord_1", "usr_1", ("prod_b", "prod_a", "prod_c")))
    assert effects.products == ("prod_a", "prod_b", "prod_c")
    assert set(effects.pairs) == {
        ("prod_a", "prod_b"),
        ("prod_b", "prod_a"),
        ("prod_a", "prod_c"),
        ("prod_c", "prod_a"),
        ("prod_b", "prod_c"),
        ("prod_c", "prod_b"),
    }
    assert len(effects.pairs) == 6


def test_a_product_listed_twice_in_one_order_counts_once_and_never_pairs_with_itself() -> None:
    effects = purchase_effects(ConfirmedOrder("ord_1", "usr_1", ("prod_a", "prod_a", "prod_b")))
    assert effects.products == ("prod_a", "prod_b")
    assert sorted(effects.pairs) == [("prod_a", "prod_b"), ("prod_b", "prod_a")]


def test_a_single_product_order_has_no_pairs_but_is_a_purchase() -> None:
    effects = purchase_effects(ConfirmedOrder("ord_1", "usr_1", ("prod_a",)))
    assert (effects.user_id, effects.products, effects.pairs) == ("usr_1", ("prod_a",), ())


def test_pairs_come_in_one_deterministic_order() -> None:
    # Concurrent consumers then lock rows in the same order on PostgreSQL (no deadlocks).
    first = purchase_effects(ConfirmedOrder("ord_1", "u", ("prod_c", "prod_a", "prod_b")))
    second = purchase_effects(ConfirmedOrder("ord_2", "u", ("prod_b", "prod_c", "prod_a")))
    assert first.pairs == second.pairs == tuple(sorted(first.pairs))


# --- ranking --------------------------------------------------------------------------------------


def test_counts_rank_most_first_with_ties_broken_by_id() -> None:
    assert [c.product_id for c in by_count({"b": 2, "a": 2, "c": 5, "zero": 0})] == ["c", "a", "b"]


def test_fill_ins_put_popular_products_first_and_keep_the_given_order_otherwise() -> None:
    tier = by_popularity(["p1", "p2", "p3", "p4"], {"p3": 7, "p4": 1})
    assert [c.product_id for c in tier] == ["p3", "p4", "p1", "p2"]


def test_every_candidate_of_a_tier_outranks_every_candidate_of_later_tiers() -> None:
    ranked = rank(
        [by_count({"a": 1, "b": 50}), by_popularity(["c", "d"], {"d": 1000}), by_count({"e": 9})],
        exclude=(),
    )
    assert [r.product_id for r in ranked] == ["b", "a", "d", "c", "e"]
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 for s in scores)
    assert scores[0] == 1.0
    # Strictly separated bands: the weakest co-purchase beats the most popular fill-in.
    assert scores[1] > scores[2]


def test_a_product_appears_once_at_its_best_place() -> None:
    ranked = rank([by_count({"a": 3, "b": 1}), by_popularity(["b", "c", "a"], {})], exclude=())
    assert [r.product_id for r in ranked] == ["a", "b", "c"]


def test_excluded_products_never_appear_in_any_tier() -> None:
    tiers = [by_count({"subject": 9, "a": 1}), by_popularity(["subject", "b"], {}), by_count({"a": 1})]
    ranked = rank(tiers, exclude={"subject"})
    assert [r.product_id for r in ranked] == ["a", "b"]


def test_empty_tiers_leave_the_others_scored_within_zero_and_one() -> None:
    ranked = rank([[], [], by_count({"x": 3, "y": 1})], exclude=())
    assert [r.product_id for r in ranked] == ["x", "y"]
    assert all(0 < r.score <= 1 / 3 for r in ranked)


def test_nothing_to_rank_is_an_empty_list() -> None:
    assert rank([[], []], exclude={"a"}) == []


def test_candidates_without_positive_weight_are_ignored() -> None:
    assert rank([[Candidate("a", 0.0), Candidate("b", 2.0)]], exclude=()) == rank([[Candidate("b", 2.0)]], exclude=())


def test_fill_ins_from_several_categories_take_turns() -> None:
    assert interleave([["k1", "k2", "k3"], ["a1"], ["o1", "o2"]]) == ["k1", "a1", "o1", "k2", "o2", "k3"]
    assert interleave([]) == []
