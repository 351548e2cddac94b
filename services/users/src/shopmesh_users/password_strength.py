"""How guessable a new password is, by zxcvbn's estimate (zxcvbn-rs, through its Python bindings).

NIST SP 800-63B 5.1.1.2 asks that a new password be refused when it is on a list of commonly used or compromised
values, or is a context-specific word (the service's name, the username). zxcvbn estimates the guesses an
attacker needs, from its bundled lists (the most common passwords of public breaches, English words, names and
surnames, words of television and films) and the patterns people build from them (l33t substitutions, keyboard
walks, repeats, sequences, dates), with the caller's words (the e-mail address) as a list of their own: so
"12345678", "password1" and the e-mail address itself all count as guessable. The Rust port is used, not the pure
Python zxcvbn: both run on the event loop (the bindings hold the GIL, the Python port keeps the caller's words in
a module-wide dictionary), and the Python port took ~0.7 s of CPU for 24 characters of l33t symbols, the Rust one
~0.07 s.
"""

from __future__ import annotations

from collections.abc import Sequence

from zxcvbn_rs_py import zxcvbn

# zxcvbn's scores 0 and 1: fewer than about a million guesses, what an attacker makes online against a service
# that throttles logins, or in seconds against a leaked hash.
MIN_SCORE = 2
# Only a password's first characters are estimated: the estimate's cost grows faster than the length (128
# characters of l33t symbols held the event loop for seconds, 32 for about 0.1 s, on a loaded machine). A
# password whose first 32 characters are hard to guess is no easier whole; one whose first 32 are guessable
# ("a" * 32 and anything) is refused.
ESTIMATED_CHARACTERS = 32
# A context-specific word for every account (NIST's example: the name of the service).
SERVICE_WORDS = ("shopmesh",)


def too_guessable(password: str, context: Sequence[str]) -> bool:
    """Whether `password` is too easy to guess, given the words of the account it is for (`context`: its e-mail
    address and the parts of it, which zxcvbn matches in any letter case)."""
    words = [word for word in (*context, *SERVICE_WORDS) if word]
    estimate = zxcvbn(password[:ESTIMATED_CHARACTERS], user_inputs=words)
    return int(estimate.score) < MIN_SCORE
