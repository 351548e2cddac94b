"""Write (or check) the storefront's list of the countries orders ships to, shopmesh_platform/storefront/countries.js.

    .venv/bin/python k8s/storefront_countries.py          write it
    .venv/bin/python k8s/storefront_countries.py --check  exit 1 if the committed file differs from what this writes

The checkout's country is a picker of these codes (docs/storefront.md): orders accepts an assigned ISO 3166-1
alpha-2 code only (pycountry's table), and a shopper who typed "UK" or "United Kingdom" was refused. The list is
orders' own set, read here, never a copy kept by hand: a pycountry release that assigns or withdraws a code makes
the committed file stale, and `make lint` says so. The browser names each code in its own language
(Intl.DisplayNames), so only the codes are written. `make http-api` then copies the file into the gateway's chart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script from any checkout: the platform (generated_files) and orders' validation of this one.
sys.path[:0] = [str(ROOT / "libs" / "platform" / "src"), str(ROOT / "services" / "orders" / "src")]
from shopmesh_orders.domain.validation import COUNTRIES  # noqa: E402
from shopmesh_platform.generated_files import write_or_check  # noqa: E402

SOURCE = "what k8s/storefront_countries.py writes from orders' COUNTRIES"
OUTPUT = ROOT / "libs" / "platform" / "src" / "shopmesh_platform" / "storefront" / "countries.js"
HEADER = """\
// The ISO 3166-1 alpha-2 codes orders accepts as a shipping address's country (its validation's COUNTRIES,
// pycountry's table): the checkout's country picker offers these. Written by k8s/storefront_countries.py
// (`make storefront-countries`); `make lint` fails when it is stale. Do not edit.
"""


def rendered() -> str:
    """The module, as prettier formats it (`make lint` checks the storefront's files with prettier too)."""
    codes = "".join(f"  {json.dumps(code)},\n" for code in sorted(COUNTRIES))
    return f"{HEADER}export const COUNTRIES = [\n{codes}];\n"


def files() -> dict[Path, str]:
    return {OUTPUT: rendered()}


def main(argv: list[str] | None = None) -> int:
    return write_or_check(argv, __doc__, files, root=ROOT, source=SOURCE, remedy="make storefront-countries")


if __name__ == "__main__":
    sys.exit(main())
