"""Counting the characters `text_lines` reads: a limit checked before the text is normalized must read none."""

from __future__ import annotations

import unicodedata

import pytest

from shopmesh_chassis import text_lines


class CharactersRead:
    """Stands in for `unicodedata` in `text_lines`: counts the characters it normalizes or looks up."""

    def __init__(self) -> None:
        self.count = 0

    def normalize(self, form: unicodedata._NormalizationForm, text: str) -> str:
        self.count += len(text)
        return unicodedata.normalize(form, text)

    def category(self, char: str) -> str:
        self.count += 1
        return unicodedata.category(char)


def characters_read(monkeypatch: pytest.MonkeyPatch) -> CharactersRead:
    """From now until the test ends, `text_lines` reads through the returned counter."""
    read = CharactersRead()
    monkeypatch.setattr(text_lines, "unicodedata", read)
    return read
