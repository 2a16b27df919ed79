"""Request and response bodies for /v1/auth. Requests refuse unknown fields (422).

User-supplied text is sanitized here, during validation, by app.core.sanitize — so a 422 names
the offending field — and the service only ever sees clean values.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from app.auth.fields import (
    BIO_MAX_LENGTH,
    DISPLAY_NAME_MAX_LENGTH,
    EMAIL_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    SPECIAL_USE_DOMAIN_PATTERN,
    NormalizedEmail,
    normalize_email,
)
from app.core.sanitize import TEXT_PATTERN, plain_text, rich_text

# The limits a client can see in the schema are the limits the server enforces: the text as sent is at
# most the stored length (maxLength), without the characters the sanitizer refuses (pattern); the
# cleaned value is checked again (rich text can only grow by escaping, e.g. "&" -> "&amp;").
_TEXT_SCHEMA: JsonDict = {"pattern": TEXT_PATTERN}
_PASSWORD_SCHEMA: JsonDict = {"pattern": "\\S"}  # not only whitespace


def _display_name(value: str | None) -> str | None:
    return None if value is None else plain_text(value, max_length=DISPLAY_NAME_MAX_LENGTH)


def _bio(value: str | None) -> str | None:
    return None if value is None else rich_text(value, max_length=BIO_MAX_LENGTH)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignupRequest(_Request):
    email: str = Field(
        max_length=EMAIL_MAX_LENGTH,
        examples=["ada@example.com"],
        description="An email address; not at a special-use domain (.test, .invalid, .onion, ...).",
        json_schema_extra={"format": "email", "not": {"pattern": SPECIAL_USE_DOMAIN_PATTERN}},
    )
    password: str = Field(
        min_length=PASSWORD_MIN_LENGTH,
        max_length=PASSWORD_MAX_LENGTH,
        description=f"{PASSWORD_MIN_LENGTH}–{PASSWORD_MAX_LENGTH} characters, not only whitespace",
        json_schema_extra=_PASSWORD_SCHEMA,
    )
    display_name: str | None = Field(
        default=None,
        max_length=DISPLAY_NAME_MAX_LENGTH,
        description=f"Plain text: markup is stripped. At most {DISPLAY_NAME_MAX_LENGTH} characters, "
        "also after cleaning; no control or bidirectional-override characters.",
        json_schema_extra=_TEXT_SCHEMA,
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value).display

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value  # never stripped or altered here: hashed as given (NFKC-normalised)

    @field_validator("display_name")
    @classmethod
    def _clean_display_name(cls, value: str | None) -> str | None:
        return _display_name(value)

    def normalized_email(self) -> NormalizedEmail:
        return normalize_email(self.email)


class LoginRequest(_Request):
    # Not validated as an address here: a malformed email gets the same 401 as a wrong password.
    email: str = Field(min_length=1, max_length=EMAIL_MAX_LENGTH)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)


class ProfileUpdate(_Request):
    display_name: str | None = Field(
        default=None,
        max_length=DISPLAY_NAME_MAX_LENGTH,
        description=f"Plain text: markup is stripped. At most {DISPLAY_NAME_MAX_LENGTH} characters, also "
        'after cleaning; no control or bidirectional-override characters. null or "" clears it.',
        json_schema_extra=_TEXT_SCHEMA,
    )
    bio: str | None = Field(
        default=None,
        max_length=BIO_MAX_LENGTH,
        description="Rich text: sanitized to p br b i em strong code ul ol li a[href] "
        f"(http/https/mailto links). At most {BIO_MAX_LENGTH} characters, also as sanitized HTML (escaping "
        'and link attributes count); no control or bidirectional-override characters. null or "" clears it.',
        json_schema_extra=_TEXT_SCHEMA,
    )

    @field_validator("display_name")
    @classmethod
    def _clean_display_name(cls, value: str | None) -> str | None:
        return _display_name(value)

    @field_validator("bio")
    @classmethod
    def _clean_bio(cls, value: str | None) -> str | None:
        return _bio(value)

    def changes(self) -> dict[str, str | None]:
        """Only the fields the client sent."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class SignupResponse(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str | None


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


class Profile(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str | None
    bio: str | None
    subscription_status: str
