"""One line of text a person types and others read: a display name, a line of a shipping address.

Such a value is kept in Unicode's composed form (NFC), trimmed, as people see it: the same name typed on
one keyboard and pasted decomposed from another (macOS sends accents as combining marks) is one name of one
length, not two strings, one of them refused as too long. It must show something: a value of format
characters only (zero-width spaces, joiners, byte-order marks: category Cf, which `str.strip()` keeps) or of
blank fillers (Unicode's default-ignorable characters) prints as nothing on a page or a shipping label, and
is as missing as an empty one; stray ones around the text are trimmed with the blanks (direction marks and
isolates, and at the end variation selectors and tag characters, belong to the text and stay). And it is
one line of text: control characters (category Cc: line breaks, tabs, terminal escapes, backspace, C1
controls) and the line and paragraph separators have no place in a name or an address line; they would be
stored and answered back to every screen, log and label that shows the value. Format characters between
visible ones stay: a zero-width joiner or non-joiner belongs to some names (Persian, emoji sequences), and
direction marks to mixed-script ones.

Lengths remain each field's own rule (the service's reasons and limits), counted on the normalized value. But a
value longer than any line of its field's limit could be as sent (`too_long_to_normalize`) is refused as too long
before it is normalized or scanned: both go character by character, and a megabyte of text (what a request may
carry) held the event loop ~70 ms per call.
"""

from __future__ import annotations

import re
import unicodedata

from shopmesh_chassis.contract_limits import required_violation
from shopmesh_chassis.errors import FieldViolation

INVALID_CHARACTERS = "INVALID_CHARACTERS"
# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15.1): drawn as nothing. Most
# are format characters (Cf), but not all: the variation selectors, the combining grapheme joiner and the
# Khmer inherent vowels are marks (Mn), the Hangul fillers letters (Lo). Python's unicodedata lacks the
# property, so its ranges are here.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
# The same ranges as one character class: text of any length is cleared of them in one pass of C code.
_DEFAULT_IGNORABLE_CHARACTERS = re.compile(
    "[" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in _DEFAULT_IGNORABLE) + "]"
)
_BLANK_PATTERN = "\u2800"  # BRAILLE PATTERN BLANK: a symbol (So) that draws nothing
_NOT_ON_ONE_LINE = frozenset({"Cc", "Zl", "Zp"})
# How many characters as sent a line may have per character it has once normalized: decomposed (a letter and
# its marks, Hangul jamo) a character takes up to four (NFD's most: U+1F82, say, alpha with three marks), and
# blanks and invisible characters around it are trimmed. Users' passwords are bounded by it before NFKC too.
AS_SENT_PER_CHARACTER = 8


# Invisible characters that are kept at an edge of a line, for they belong to the text: direction marks,
# embeddings and isolates (an isolate opened at the start and closed at the end of a right-to-left name), and,
# at the end, what attaches to the character before it: variation selectors (the emoji style of "❤️", an
# ideographic variant) and tag characters (a flag's region). Every other invisible character around the text
# (a byte-order mark pasted from a file, a zero-width space, a blank filler) is trimmed with the whitespace.
_DIRECTIONAL = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ATTACHING = ((0x180B, 0x180F), (0xFE00, 0xFE0F), (0xE0020, 0xE007F), (0xE0100, 0xE01EF))


def without_default_ignorable(value: str) -> str:
    """`value` without the characters Unicode draws as nothing (Default_Ignorable_Code_Point): for comparing
    text as people see it, where "wo\u00adol" (a soft hyphen) or "wool\u200b" (a zero-width space pasted
    with it) is "wool". Not for keeping a value: a joiner or a direction mark between letters belongs to it."""
    return _DEFAULT_IGNORABLE_CHARACTERS.sub("", value)


def too_long_to_normalize(value: str, max_length: int) -> bool:
    """Whether `value` is longer than any line of at most `max_length` characters could be as sent: too long,
    to be refused before `normalized_line` or `line_violation` runs over it."""
    return len(value) > AS_SENT_PER_CHARACTER * max_length


def normalized_line(value: str) -> str:
    """`value` as it is kept: composed (NFC), without the whitespace and stray invisible characters around it."""
    text = unicodedata.normalize("NFC", value)
    start, end = 0, len(text)
    while start < end and not _visible(text[start]) and text[start] not in _DIRECTIONAL:
        start += 1
    while end > start and not _visible(text[end - 1]) and not _belongs_at_the_end(text[end - 1]):
        end -= 1
    return text[start:end]


def _belongs_at_the_end(char: str) -> bool:
    code = ord(char)
    return char in _DIRECTIONAL or any(low <= code <= high for low, high in _ATTACHING)


def line_violation(field: str, value: str) -> FieldViolation | None:
    """REQUIRED when the (normalized) `value` shows nothing, INVALID_CHARACTERS when it holds a control
    character or a line break of any kind; None otherwise."""
    if not shows_something(value):
        return required_violation(field)
    return characters_violation(field, value)


def shows_something(value: str) -> bool:
    """Whether `value` holds a visible character: not only blanks, format characters (zero-width spaces,
    joiners) and characters drawn as nothing."""
    return any(_visible(char) for char in value)


def characters_violation(field: str, value: str) -> FieldViolation | None:
    """INVALID_CHARACTERS when `value` holds a control character or a line break of any kind; None otherwise.
    The one-line rule alone, for optional free text that may be left empty (a cancellation's reason)."""
    if any(unicodedata.category(char) in _NOT_ON_ONE_LINE for char in value):
        return FieldViolation(field, "must be one line of text, without control characters", INVALID_CHARACTERS)
    return None


def _visible(char: str) -> bool:
    if char.isspace() or char == _BLANK_PATTERN:
        return False
    category = unicodedata.category(char)
    if category == "Cf" or category[0] == "Z":
        return False
    return _DEFAULT_IGNORABLE_CHARACTERS.match(char) is None
