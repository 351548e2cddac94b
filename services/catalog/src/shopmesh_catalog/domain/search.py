"""How search text is matched and ranked.

A product matches when every term of the query occurs, as a case-insensitive substring, in its name or
its description. Relevance is the sum over the terms of NAME_WEIGHT when the term is in the name and
DESCRIPTION_WEIGHT when it is in the description, so a name hit outranks a description-only hit.

Case-insensitivity is done here, once, in Python (`fold`), and the folded text is stored next to the
original: SQLite's lower() and LIKE fold ASCII only and PostgreSQL's depend on the database's locale, so
folding in SQL would make the two databases disagree on anything beyond ASCII.
"""

from __future__ import annotations

import unicodedata

NAME_WEIGHT = 2
DESCRIPTION_WEIGHT = 1


def fold(text: str) -> str:
    """The form in which text is compared: compatibility-normalized and case-folded ("Straße" → "strasse")."""
    return unicodedata.normalize("NFKC", text).casefold()


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
