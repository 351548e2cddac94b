"""One line of text a person types and others read: a display name, a line of a shipping address.

Such a value is kept in Unicode's composed form (NFC), trimmed, as people see it: the same name typed on
one keyboard and pasted decomposed from another (macOS sends accents as combining marks) is one name of one
length, not two strings, one of them refused as too long. It must show something: a value of format
characters only (zero-width spaces, joiners, byte-order marks: category Cf, which `str.strip()` keeps) or of
blank fillers prints as nothing on a page or a shipping label, and is as missing as an empty one. And it is
one line of text: control characters (category Cc: line breaks, tabs, terminal escapes, backspace, C1
controls) and the line and paragraph separators have no place in a name or an address line; they would be
stored and answered back to every screen, log and label that shows the value. Format characters between
visible ones stay: a zero-width joiner or non-joiner belongs to some names (Persian, emoji sequences), and
direction marks to mixed-script ones.

Lengths remain each field's own rule (the service's reasons and limits), counted on the normalized value.
"""

from __future__ import annotations

import unicodedata

from shopmesh_chassis.errors import FieldViolation

INVALID_CHARACTERS = "INVALID_CHARACTERS"
REQUIRED = "REQUIRED"
# Letters by category that draw nothing: the Hangul fillers and the blank Braille pattern.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_NOT_ON_ONE_LINE = frozenset({"Cc", "Zl", "Zp"})


def normalized_line(value: str) -> str:
    """`value` as it is kept: composed (NFC), without surrounding whitespace."""
    return unicodedata.normalize("NFC", value).strip()


def line_violation(field: str, value: str) -> FieldViolation | None:
    """REQUIRED when the (normalized) `value` shows nothing, INVALID_CHARACTERS when it holds a control
    character or a line break of any kind; None otherwise."""
    if not any(_visible(char) for char in value):
        return FieldViolation(field, "must not be empty", REQUIRED)
    if any(unicodedata.category(char) in _NOT_ON_ONE_LINE for char in value):
        return FieldViolation(field, "must be one line of text, without control characters", INVALID_CHARACTERS)
    return None


def _visible(char: str) -> bool:
    category = unicodedata.category(char)
    return not (category == "Cf" or category[0] == "Z" or char.isspace() or char in _BLANK_LETTERS)
