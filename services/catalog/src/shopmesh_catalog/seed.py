"""The seed catalog: six categories, thirty-six products, prices in USD cents.

Loaded at startup when SEED_CATALOG is true (the default): rows missing by id are inserted, existing rows
are left as they are, so restarts and concurrent replicas neither duplicate nor overwrite anything.

The product ids are part of the project's fixtures: other services' tests, the README walk-through and
the inventory service's own stock seed refer to them. Change an id only together with all of those.
"""

from __future__ import annotations

from shopmesh_catalog.domain.models import CategoryData, Money, ProductData

# The stock the inventory service seeds for each of these products (it keeps its own copy of the ids:
# services never import each other).
DEFAULT_STOCK_QUANTITY = 100

IMAGE_BASE_URL = "https://images.shopmesh.example/products"

CATEGORIES: tuple[CategoryData, ...] = (
    CategoryData("kitchen", "Kitchen"),
    CategoryData("home", "Home"),
    CategoryData("outdoors", "Outdoors"),
    CategoryData("electronics", "Electronics"),
    CategoryData("books", "Books"),
    CategoryData("apparel", "Apparel"),
)


def _product(product_id: str, category: str, name: str, cents: int, description: str) -> ProductData:
    slug = product_id.removeprefix("prod_").replace("_", "-")
    return ProductData(
        id=product_id,
        name=name,
        description=description,
        category=category,
        price=Money(cents, "USD"),
        image_url=f"{IMAGE_BASE_URL}/{slug}.jpg",
    )


PRODUCTS: tuple[ProductData, ...] = (
    # kitchen
    _product(
        "prod_chef_knife",
        "kitchen",
        "8-inch Chef's Knife",
        8900,
        "Forged high-carbon stainless steel blade with a full tang and a riveted pakkawood handle. "
        "Holds a keen edge through daily chopping, slicing and mincing.",
    ),
    _product(
        "prod_cast_iron_skillet",
        "kitchen",
        "Cast Iron Skillet, 10 inch",
        3499,
        "Pre-seasoned cast iron that goes from stovetop to oven to campfire. "
        "Even heat for searing steaks, baking cornbread and frying eggs.",
    ),
    _product(
        "prod_pour_over_kettle",
        "kitchen",
        "Gooseneck Pour-Over Kettle",
        5900,
        "Electric kettle with a precision gooseneck spout and temperature presets for green tea, "
        "oolong and pour-over coffee. Keeps water warm for 30 minutes.",
    ),
    _product(
        "prod_cutting_board",
        "kitchen",
        "End-Grain Walnut Cutting Board",
        7450,
        "Thick end-grain walnut board that is gentle on knife edges. "
        "Juice groove on one side, flat serving surface on the other.",
    ),
    _product(
        "prod_french_press",
        "kitchen",
        "Stainless French Press, 1 L",
        3900,
        "Double-walled stainless steel press that keeps coffee hot for an hour. "
        "Four-level filter for a clean cup without grounds.",
    ),
    _product(
        "prod_burr_grinder",
        "kitchen",
        "Conical Burr Coffee Grinder",
        12900,
        "Forty grind settings from espresso-fine to French-press-coarse. Steel conical burrs grind evenly and quietly.",
    ),
    # home
    _product(
        "prod_linen_duvet",
        "home",
        "Stonewashed Linen Duvet Cover, Queen",
        18900,
        "Breathable European flax linen, stonewashed for softness. "
        "Coconut shell buttons and interior corner ties keep the duvet in place.",
    ),
    _product(
        "prod_wool_throw",
        "home",
        "Merino Wool Throw Blanket",
        11900,
        "A warm, lightweight throw knitted from soft merino wool. Sized for the sofa, 130 x 170 cm.",
    ),
    _product(
        "prod_ceramic_vase",
        "home",
        "Speckled Ceramic Vase",
        4200,
        "Hand-thrown stoneware vase with a speckled matte glaze. Watertight for fresh flowers.",
    ),
    _product(
        "prod_desk_lamp",
        "home",
        "Brass Task Lamp",
        8900,
        "Adjustable arm and head in brushed brass with a weighted base. "
        "Warm LED bulb included, dimmable from the switch.",
    ),
    _product(
        "prod_soy_candle",
        "home",
        "Cedar & Sage Soy Candle",
        2400,
        "Hand-poured soy wax candle with a cotton wick in an amber glass jar. About 50 hours of burn time.",
    ),
    _product(
        "prod_bath_towels",
        "home",
        "Turkish Cotton Bath Towel Set",
        6800,
        "Two bath towels and two hand towels woven from long-staple Turkish cotton. "
        "Absorbent, quick to dry, and softer with every wash.",
    ),
    # outdoors
    _product(
        "prod_trail_daypack",
        "outdoors",
        "Trail Daypack, 28 L",
        11900,
        "Lightweight daypack with a ventilated back panel, hip belt and hydration sleeve. "
        "Water-resistant recycled nylon.",
    ),
    _product(
        "prod_insulated_bottle",
        "outdoors",
        "Insulated Water Bottle, 750 ml",
        3200,
        "Vacuum-insulated stainless steel bottle: cold for 24 hours, hot for 12. Leakproof lid with a carry loop.",
    ),
    _product(
        "prod_camp_stove",
        "outdoors",
        "Compact Camp Stove",
        4995,
        "Folding canister stove that boils a liter of water in about three minutes. "
        "Piezo ignition and a wind-resistant burner.",
    ),
    _product(
        "prod_headlamp",
        "outdoors",
        "Rechargeable Headlamp, 400 lm",
        3999,
        "USB-C rechargeable headlamp with a red night-vision mode and a lock against switching on in a pack.",
    ),
    _product(
        "prod_sleeping_bag",
        "outdoors",
        "Down Sleeping Bag, -5 °C",
        27900,
        "Responsibly sourced 650-fill down in a mummy cut, comfortable down to -5 °C. "
        "Packs into the compression sack included.",
    ),
    _product(
        "prod_trekking_poles",
        "outdoors",
        "Carbon Trekking Poles",
        13900,
        "A pair of three-section carbon fiber poles with cork grips and quick flick-lock adjustment.",
    ),
    # electronics
    _product(
        "prod_wireless_earbuds",
        "electronics",
        "Wireless Noise-Cancelling Earbuds",
        14900,
        "Active noise cancelling, transparency mode and eight hours of playback per charge. "
        "The case charges wirelessly.",
    ),
    _product(
        "prod_mechanical_keyboard",
        "electronics",
        "Mechanical Keyboard, Tenkeyless",
        10900,
        "Hot-swappable tactile switches, PBT keycaps and a USB-C cable. Connects over Bluetooth to three devices.",
    ),
    _product(
        "prod_usb_c_charger",
        "electronics",
        "65 W USB-C Charger",
        4500,
        "Compact gallium nitride charger with two USB-C ports and one USB-A port. Fast-charges a laptop and a phone.",
    ),
    _product(
        "prod_e_reader",
        "electronics",
        "E-Reader with Warm Light",
        13999,
        "Glare-free 7-inch paper-like display with adjustable warm light. Waterproof, weeks of battery life.",
    ),
    _product(
        "prod_bluetooth_speaker",
        "electronics",
        "Portable Bluetooth Speaker",
        7900,
        "Rugged, waterproof speaker with twelve hours of playback. Pair two for stereo sound.",
    ),
    _product(
        "prod_smart_plug",
        "electronics",
        "Smart Plug, 2-Pack",
        2499,
        "Wi-Fi plugs with schedules, energy monitoring and voice assistant support. No hub required.",
    ),
    # books
    _product(
        "prod_book_sourdough",
        "books",
        "Sourdough at Home",
        2800,
        "A baker's guide to starters, hydration and shaping, with thirty recipes from country loaves "
        "to cinnamon rolls. Hardcover, 256 pages.",
    ),
    _product(
        "prod_book_patient_gardener",
        "books",
        "The Patient Gardener",
        2400,
        "Essays on planting for the long term: soil, perennials and the slow pleasures of a garden. "
        "Paperback, 304 pages.",
    ),
    _product(
        "prod_book_birds_field_guide",
        "books",
        "Field Guide to Backyard Birds",
        2999,
        "Over four hundred species with illustrations, range maps and song descriptions. "
        "Flexible cover that fits in a jacket pocket.",
    ),
    _product(
        "prod_book_distributed_systems",
        "books",
        "Practical Distributed Systems",
        4999,
        "Timeouts, retries, idempotency and sagas explained with working examples. "
        "For engineers building services that talk to each other. Paperback, 412 pages.",
    ),
    _product(
        "prod_book_weeknight_dinners",
        "books",
        "A Year of Weeknight Dinners",
        3200,
        "Fifty-two seasonal menus that take thirty minutes or less, with a shopping list for every week.",
    ),
    _product(
        "prod_book_night_sky",
        "books",
        "Maps of the Night Sky",
        2600,
        "Star charts for every month of the year, with the planets, meteor showers and deep-sky objects "
        "visible with binoculars.",
    ),
    # apparel
    _product(
        "prod_merino_tshirt",
        "apparel",
        "Merino Wool T-Shirt",
        6500,
        "Lightweight merino wool jersey that regulates temperature and resists odor. Made for travel and trails.",
    ),
    _product(
        "prod_rain_jacket",
        "apparel",
        "Packable Rain Jacket",
        14900,
        "Waterproof, breathable shell with taped seams and an adjustable hood. Packs into its own pocket.",
    ),
    _product(
        "prod_selvedge_jeans",
        "apparel",
        "Selvedge Denim Jeans",
        12800,
        "Raw 14 oz selvedge denim in a straight fit. Fades to a pattern of your own.",
    ),
    _product(
        "prod_hiking_socks",
        "apparel",
        "Hiking Socks, 3-Pack",
        2900,
        "Cushioned merino wool socks with a reinforced heel and toe. Seamless toe, no blisters.",
    ),
    _product(
        "prod_canvas_tote",
        "apparel",
        "Waxed Canvas Tote",
        5800,
        "Water-resistant waxed cotton canvas with leather handles and an inside zip pocket.",
    ),
    _product(
        "prod_knit_beanie",
        "apparel",
        "Ribbed Knit Beanie",
        2800,
        "Soft ribbed beanie in a wool and cashmere blend, with a fold-over cuff.",
    ),
)
