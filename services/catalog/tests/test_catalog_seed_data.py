"""The seed catalog is valid, and its product ids stay what other services and docs rely on."""

from __future__ import annotations

from collections import Counter

from shopmesh_catalog import seed
from shopmesh_catalog.domain.validation import catalog_data_violations

# Other services' tests, the README walk-through and the inventory stock seed use these ids.
PUBLISHED_PRODUCT_IDS = {
    "prod_chef_knife",
    "prod_cast_iron_skillet",
    "prod_pour_over_kettle",
    "prod_cutting_board",
    "prod_french_press",
    "prod_burr_grinder",
    "prod_linen_duvet",
    "prod_wool_throw",
    "prod_ceramic_vase",
    "prod_desk_lamp",
    "prod_soy_candle",
    "prod_bath_towels",
    "prod_trail_daypack",
    "prod_insulated_bottle",
    "prod_camp_stove",
    "prod_headlamp",
    "prod_sleeping_bag",
    "prod_trekking_poles",
    "prod_wireless_earbuds",
    "prod_mechanical_keyboard",
    "prod_usb_c_charger",
    "prod_e_reader",
    "prod_bluetooth_speaker",
    "prod_smart_plug",
    "prod_book_sourdough",
    "prod_book_patient_gardener",
    "prod_book_birds_field_guide",
    "prod_book_distributed_systems",
    "prod_book_weeknight_dinners",
    "prod_book_night_sky",
    "prod_merino_tshirt",
    "prod_rain_jacket",
    "prod_selvedge_jeans",
    "prod_hiking_socks",
    "prod_canvas_tote",
    "prod_knit_beanie",
}


def test_seed_satisfies_every_catalog_data_rule() -> None:
    assert catalog_data_violations(seed.CATEGORIES, seed.PRODUCTS) == []


def test_seed_product_ids_are_the_published_ones() -> None:
    assert {p.id for p in seed.PRODUCTS} == PUBLISHED_PRODUCT_IDS
    assert len(seed.PRODUCTS) == len(PUBLISHED_PRODUCT_IDS)


def test_seed_has_six_products_in_each_of_six_categories() -> None:
    assert Counter(p.category for p in seed.PRODUCTS) == {c.id: 6 for c in seed.CATEGORIES}
    assert len(seed.CATEGORIES) == 6


def test_seed_prices_are_usd_minor_units() -> None:
    assert {p.price.currency for p in seed.PRODUCTS} == {"USD"}
    assert all(isinstance(p.price.amount_minor, int) and p.price.amount_minor > 0 for p in seed.PRODUCTS)


def test_seed_images_are_named_after_the_product() -> None:
    for product in seed.PRODUCTS:
        slug = product.id.removeprefix("prod_").replace("_", "-")
        assert product.image_url == f"https://images.shopmesh.example/products/{slug}.jpg"


def test_seed_offers_inventory_a_positive_default_stock() -> None:
    assert seed.DEFAULT_STOCK_QUANTITY > 0
