"""One rule for an e-mail address a shop sends mail to, for every service that takes one.

users checks it at sign-up, orders on the address a checkout gives, notifications on the event it mails:
a looser check in one of them let `root,ada@example.com` through, which an SMTP library reads as two
recipients. The rule is what a sign-up form accepts: RFC 5322's dot-atom local part (at most 64
characters, RFC 5321) and a DNS host name with an alphabetic top-level label, 254 characters in all.
Quoted local parts and address literals are legal but not worth the confusion.
"""

from __future__ import annotations

import re

MAX_EMAIL_LENGTH = 254
MAX_EMAIL_LOCAL_PART_LENGTH = 64

_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[a-z]{{2,63}}", re.IGNORECASE | re.ASCII)


def is_email_address(text: str) -> bool:
    """Whether `text` is one deliverable address, as given (no trimming; letters of either case)."""
    return (
        len(text) <= MAX_EMAIL_LENGTH
        and _EMAIL.fullmatch(text) is not None
        and len(text.partition("@")[0]) <= MAX_EMAIL_LOCAL_PART_LENGTH
    )
