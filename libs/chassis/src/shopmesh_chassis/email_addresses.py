"""One rule for an e-mail address a shop sends mail to, for every service that takes one.

users checks it at sign-up, orders on the address a checkout gives, notifications on the event it mails:
a looser check in one of them let `root,ada@example.com` through, which an SMTP library reads as two
recipients. The rule is what a sign-up form accepts: RFC 5322's dot-atom local part (at most 64
characters, RFC 5321) and a DNS host name with an alphabetic top-level label, 254 characters in all.
Quoted local parts and address literals are legal but not worth the confusion.
"""

from __future__ import annotations

import re
import string

MAX_EMAIL_LENGTH = 254
MAX_EMAIL_LOCAL_PART_LENGTH = 64

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[a-z]{{2,63}}", re.IGNORECASE | re.ASCII)
# Only ASCII letters: Unicode's lower case maps some other letters to ASCII ones (U+212A KELVIN SIGN to "k"), and
# an address lower-cased that way was the look-alike of another: it signed in to, or was refused as taken by, the
# account of the address it imitates. Left as typed, it fails `is_email_address` (ASCII only).
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def is_email_address(text: str) -> bool:
    """Whether `text` is one deliverable address, as given (no trimming; letters of either case)."""
    return (
        len(text) <= MAX_EMAIL_LENGTH
        and _EMAIL.fullmatch(text) is not None
        and len(text.partition("@")[0]) <= MAX_EMAIL_LOCAL_PART_LENGTH
    )


def canonical_email(text: str) -> str:
    """The address as users stores an account's and every service compares one with it: trimmed, its ASCII
    letters lower-cased (mail servers match host names in any case, and the shop takes the local part alike),
    any other character as typed."""
    return text.strip().translate(_ASCII_LOWER)
