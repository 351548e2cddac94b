"""How search text is matched and ranked.

A product matches when every term of the query occurs, as a case-insensitive substring, in its name or
its description. Relevance is the sum over the terms of NAME_WEIGHT when the term is in the name and
DESCRIPTION_WEIGHT when it is in the description, so a name hit outranks a description-only hit.

Case-insensitivity is done here, once, in Python (`fold`), and the folded text is stored next to the
original: SQLite's lower() and LIKE fold ASCII only and PostgreSQL's depend on the database's locale, so
folding in SQL would make the two databases disagree on anything beyond ASCII.

Folding compares text as people read it, on both sides (the stored text and the query): compatibility
forms (full-width letters, the "fi" ligature) are their plain letters, characters drawn as nothing (a soft
hyphen, a zero-width space, a byte-order mark pasted with a query: the chassis'
`text_lines.without_default_ignorable`) are not there, and case is folded, with one fix: the dot that case
folding gives a dotted capital I ("İ" becomes "i" and U+0307) is dropped after an i or j, so that
"İSTANBUL" is found by "istanbul", and the other way round.
Accents are kept ("creme" does not find "crème"): marks change words in many languages, and a customer who
types them means them. Changing `fold` changes what the stored search columns must hold: a migration
recomputes them (catalog_0002).
"""

from __future__ import annotations

import re
import unicodedata

from shopmesh_chassis.text_lines import without_default_ignorable

NAME_WEIGHT = 2
DESCRIPTION_WEIGHT = 1


# COMBINING DOT ABOVE on a letter that has its dot already: what "İ".casefold() leaves.
_DOT_ON_SOFT_DOTTED = re.compile("(?<=[ij])\u0307")


def fold(text: str) -> str:
    """The form in which text is compared: compatibility-normalized, without invisible characters, and
    case-folded ("Straße" → "strasse", "wo\u00adol" → "wool", "İstanbul" → "istanbul")."""
    # Invisible characters go after NFKC (which makes some: a halfwidth Hangul filler) and before NFC
    # composes what they kept apart ("e", a zero-width space, U+0301 is "é").
    visible = unicodedata.normalize("NFC", without_default_ignorable(unicodedata.normalize("NFKC", text)))
    return _DOT_ON_SOFT_DOTTED.sub("", visible.casefold())


def search_terms(query: str) -> tuple[str, ...]:
    """The distinct folded terms of a query, in the order they first appear.

    Split on whitespace only, punctuation kept: "100%" or "C++" is what a customer types to find such a
    product, so a query of punctuation only ("!!!") is a search like any other, and finds what contains it.
    """
    return tuple(dict.fromkeys(fold(query).split()))


def relevance(terms: tuple[str, ...], name: str, description: str) -> int:
    """The score the store computes in SQL, as a reference for tests and readers; 0 means no match."""
    folded_name, folded_description = fold(name), fold(description)
    if not all(term in folded_name or term in folded_description for term in terms):
        return 0
    return sum(
        (NAME_WEIGHT if term in folded_name else 0) + (DESCRIPTION_WEIGHT if term in folded_description else 0)
        for term in terms
    )
