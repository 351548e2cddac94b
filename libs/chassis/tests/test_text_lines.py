"""The rule for one line of text a person types and others read (display names, address lines)."""

from __future__ import annotations

import pytest

from shopmesh_chassis.contract_limits import REQUIRED
from shopmesh_chassis.text_lines import (
    INVALID_CHARACTERS,
    characters_violation,
    line_violation,
    normalized_line,
    too_long_to_normalize,
    without_default_ignorable,
)


def test_a_line_is_kept_composed_and_trimmed() -> None:
    assert normalized_line("  Zoe\u0301\t") == "Zo\u00e9"


@pytest.mark.parametrize("value", ["", "   ", "\u200b", "\u200e\ufeff", "\u3164", "\u2800\u2800", "\u00a0"])
def test_a_line_that_shows_nothing_is_required(value: str) -> None:
    violation = line_violation("name", value)
    assert violation is not None
    assert (violation.field, violation.reason) == ("name", REQUIRED)


@pytest.mark.parametrize("value", ["a\nb", "a\tb", "a\x1b[2J", "a\x7f", "a\x85b", "a\u2028b", "a\u2029b"])
def test_a_control_character_or_line_break_is_refused(value: str) -> None:
    violation = line_violation("name", value)
    assert violation is not None
    assert violation.reason == INVALID_CHARACTERS


@pytest.mark.parametrize(
    "value",
    ["Ada", "\u0645\u0647\u200c\u0633\u0627", "\U0001f469\u200d\U0001f4bb Ada", "\u05d0\u200f 12", "Zo\u00e9"],
)
def test_format_characters_between_visible_ones_stay(value: str) -> None:
    assert line_violation("name", value) is None


@pytest.mark.parametrize(
    "value",
    [
        "\ufe0f",  # VARIATION SELECTOR-16 (category Mn)
        "\ufe00\ufe0f",
        "\U000e0100",  # VARIATION SELECTOR-17
        "\u034f",  # COMBINING GRAPHEME JOINER (Mn)
        "\u17b4\u17b5",  # KHMER VOWEL INHERENT AQ / AA (Mn)
        "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE (Mn)
        " \u200b\ufe0f ",
    ],
)
def test_a_line_of_default_ignorable_characters_only_is_required(value: str) -> None:
    """The module's rule: "It must show something". Unicode's Default_Ignorable_Code_Point characters draw
    nothing (as U+200B and U+3164, refused), but the variation selectors, the combining grapheme joiner and
    the Khmer inherent vowels are marks (category Mn), not format characters (Cf): a name of them alone
    shows as nothing and is accepted."""
    violation = line_violation("name", value)
    assert violation is not None
    assert violation.reason == REQUIRED


@pytest.mark.parametrize("value", ["\ufeffAda", "Ada\u200b", "\u200b Ada \u2060"])
def test_format_characters_around_the_text_are_trimmed_with_the_blanks(value: str) -> None:
    """docs/chassis.md: a line is "kept composed (NFC) and trimmed ... Format characters between visible
    ones (joiners, direction marks) stay". Those around it (a byte-order mark pasted from a file, a
    zero-width space from a web page) stay too: "Ada\u200b" is stored, shown and counted as a name other
    than "Ada"."""
    assert normalized_line(value) == "Ada"


@pytest.mark.parametrize(
    "value",
    [
        "Anna \u2764\ufe0f",  # RED HEART + VARIATION SELECTOR-16: the emoji presentation of the heart
        "Flag \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # Scotland's flag (tags)
        "Ada \u2067\u05e9\u05dc\u05d5\u05dd\u2069",  # a right-to-left isolate and its closing POP (PDI)
    ],
)
def test_invisible_characters_that_belong_to_the_last_visible_one_are_kept(value: str) -> None:
    """The trim is for invisible characters *around* the text (a byte-order mark, a zero-width space), and
    "Format characters between visible ones ... stay" (docs/chassis.md). A variation selector or an emoji
    tag sequence ending the text is part of its last character (an emoji, a flag), and a POP DIRECTIONAL
    ISOLATE closes an isolate the text opened: trimmed, "Anna ❤️" is kept as the text-style "Anna ❤",
    Scotland's flag as a plain black flag, and the isolate is left open, turning whatever follows the name
    (an e-mail's greeting, a label) right-to-left."""
    assert normalized_line(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "\u3164Ada",  # HANGUL FILLER (Lo): a blank filler, drawn as nothing
        "Ada\u3164",
        "\u2800Ada",  # BRAILLE PATTERN BLANK
        "Ada\u2800\u2800",
        "Ada\u115f",  # HANGUL CHOSEONG FILLER
    ],
)
def test_blank_fillers_around_the_text_are_trimmed(value: str) -> None:
    """docs/chassis.md: a line is "trimmed of whitespace and invisible characters", and the module's own
    words name "blank fillers (Unicode's default-ignorable characters)" among them. A filler before or after
    the text belongs to no character (unlike a trailing variation selector or tag sequence): kept, "Ada\u3164"
    is stored, shown and counted as a name other than "Ada" (and a 50-character limit passes "A" and 49
    invisible fillers). The release before trimmed them."""
    assert normalized_line(value) == "Ada"


@pytest.mark.parametrize("value", ["a\nb", "\t", "\x1b[2J", "a\x7f", "\x85", "a\u2028b", "a\u2029b"])
def test_the_one_line_rule_alone_refuses_a_control_character_or_line_break(value: str) -> None:
    violation = characters_violation("reason", value)
    assert violation is not None
    assert (violation.field, violation.reason) == ("reason", INVALID_CHARACTERS)


@pytest.mark.parametrize("value", ["", "   ", "\u200b", "too slow"])
def test_the_one_line_rule_alone_accepts_empty_and_blank_text(value: str) -> None:
    assert characters_violation("reason", value) is None


def test_a_line_is_too_long_to_normalize_only_past_eight_characters_as_sent_per_character_allowed() -> None:
    """Eight per character: room for a name sent decomposed (three code points a character at most) inside
    blanks, and a bound on what `normalized_line` and `line_violation` go through character by character."""
    assert not too_long_to_normalize(" " * 397 + "Ann", 50)
    assert normalized_line(" " * 397 + "Ann") == "Ann"
    assert too_long_to_normalize(" " * 398 + "Ann", 50)


def test_text_compared_as_people_see_it_loses_every_character_drawn_as_nothing() -> None:
    invisible = "\u00ad\u200b\u200c\u200d\u200e\u2060\ufe0f\ufeff\u3164\U000e0001"
    assert without_default_ignorable(f"{invisible}wo{invisible}ol{invisible}") == "wool"
    # Blanks that take room on the line are spacing, not invisible: a search splits on them.
    assert without_default_ignorable("a\u00a0b c\u3000d\u2800") == "a\u00a0b c\u3000d\u2800"
