"""The demo shop's starting stock: product id (a catalog Product.id) → units on hand.

Inventory never imports the catalog; these ids mirror the catalog's seed products
(services/catalog/src/shopmesh_catalog/seed.py) and must be kept in step with them.
Applied at startup when SEED_STOCK is true, only to products without a stock record.
"""

from __future__ import annotations

SEED_STOCK: dict[str, int] = {
    "prod_chef_knife": 100,
    "prod_cast_iron_skillet": 100,
    "prod_pour_over_kettle": 100,
    "prod_cutting_board": 100,
    "prod_french_press": 100,
    "prod_burr_grinder": 100,
    "prod_linen_duvet": 100,
    "prod_wool_throw": 100,
    "prod_ceramic_vase": 100,
    "prod_desk_lamp": 100,
    "prod_soy_candle": 100,
    "prod_bath_towels": 100,
    "prod_trail_daypack": 100,
    "prod_insulated_bottle": 100,
    "prod_headlamp": 100,
    "prod_sleeping_bag": 100,
    "prod_trekking_poles": 100,
    "prod_wireless_earbuds": 100,
    "prod_usb_c_charger": 100,
    "prod_e_reader": 100,
    "prod_bluetooth_speaker": 100,
    "prod_smart_plug": 100,
    "prod_book_sourdough": 100,
    "prod_book_patient_gardener": 100,
    "prod_book_birds_field_guide": 100,
    "prod_book_distributed_systems": 100,
    "prod_book_weeknight_dinners": 100,
    "prod_book_night_sky": 100,
    "prod_merino_tshirt": 100,
    "prod_rain_jacket": 100,
    "prod_selvedge_jeans": 100,
    "prod_hiking_socks": 100,
    "prod_canvas_tote": 100,
    "prod_knit_beanie": 100,
    # Low on purpose: a few orders make them run out (demos of INSUFFICIENT_STOCK).
    "prod_camp_stove": 3,
    "prod_mechanical_keyboard": 3,
}
