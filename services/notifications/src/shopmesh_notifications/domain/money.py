"""Amounts in minor units, written for people: "USD 1,234.56", "JPY 500"."""

from __future__ import annotations

# ISO 4217 currencies whose minor unit is not the hundredth; every other code has two decimals.
_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV"), 0
    ),
    **dict.fromkeys(("XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4,
    "UYW": 4,
}


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


def format_money(amount_minor: int, currency: str) -> str:
    digits = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**digits)
    text = f"{whole:,}" if digits == 0 else f"{whole:,}.{fraction:0{digits}d}"
    return f"{sign}{currency} {text}"
