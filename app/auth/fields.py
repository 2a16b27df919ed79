"""The account fields' limits and normalisers, shared by the request schemas and the service.

Kept apart from both so that schemas never import the service (and the service never imports the
schemas): a schema validates with these at the edge, the service relies on the same rules.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

DISPLAY_NAME_MAX_LENGTH = 100  # characters, as sent and after cleaning (column is varchar(200))
BIO_MAX_LENGTH = 5000  # characters as sent, and of sanitized HTML as stored
PASSWORD_MIN_LENGTH = 12
PASSWORD_MAX_LENGTH = 1024  # bounds the Argon2 input and the request; no truncation ever happens
EMAIL_MAX_LENGTH = 320


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# What the document adds to `format: email` (as `not: {pattern: ...}`): email-validator refuses the
# special-use domains (RFC 6761: .test, .invalid, .onion, ...) whatever the other options.
SPECIAL_USE_DOMAIN_PATTERN = (
    "[.@](" + "|".join(_any_case(name) for name in SPECIAL_USE_DOMAIN_NAMES) + ")\\.?$"
)


@dataclass(frozen=True, slots=True)
class NormalizedEmail:
    display: str  # what the user typed, with the domain canonicalised: stored in users.email
    key: str  # case-insensitive identity: stored in users.email_normalized (unique index)


def normalize_email(raw: str) -> NormalizedEmail:
    """Validate (syntax only, no DNS) and normalise an email; ``ValueError`` with a readable reason.

    ``display`` is email-validator's normalised form (surrounding whitespace removed, domain
    lower-cased and IDNA-canonicalised, local part NFC) — kept for display. ``key`` additionally
    applies NFKC (compatibility forms such as full-width letters fold to their plain form) and
    lower-cases the whole address, local part included: no mainstream provider treats the local
    part case-sensitively, and two accounts differing only in case are a support and phishing risk.
    Provider-specific aliasing (dots, ``+tags``) is *not* folded: those are distinct addresses.
    """
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from None
    display = result.normalized
    key = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", display).lower())
    if len(display) > EMAIL_MAX_LENGTH or len(key) > EMAIL_MAX_LENGTH:
        raise ValueError("is not a valid email address: too long")
    return NormalizedEmail(display=display, key=key)


def login_key(raw_email: str) -> str:
    """The identity a login attempt counts against: the normalised email, or the folded raw text."""
    try:
        return normalize_email(raw_email).key
    except ValueError:
        return unicodedata.normalize("NFKC", raw_email.strip()).lower()
