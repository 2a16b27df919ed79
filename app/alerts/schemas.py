"""Alert requests and responses. Webhook ids are digits and tokens ``[A-Za-z0-9_-]``: the server composes
the URL from them, so no user can make it call anything else. Content is plain text (markup stripped)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.sanitize import NONBLANK_TEXT_PATTERN, plain_text

MAX_CONTENT = 2000  # Discord's limit for a message's content
WEBHOOK_ID_PATTERN = r"^[0-9]{1,25}$"
WEBHOOK_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{1,100}$"  # nosec B105 # a pattern for webhook tokens, not a secret


def _content(value: str) -> str:
    cleaned = plain_text(value, max_length=MAX_CONTENT)
    if not cleaned:
        raise ValueError("must contain some text (markup is removed)")
    return cleaned


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_id: str = Field(pattern=WEBHOOK_ID_PATTERN, description="The webhook's id (digits)")
    webhook_token: str = Field(pattern=WEBHOOK_TOKEN_PATTERN, description="The webhook's token")


class AlertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_CONTENT,
            description="1–2000 characters of plain text, also after markup is stripped (some text must "
            "remain); no control or bidirectional-override characters",
            json_schema_extra={"pattern": NONBLANK_TEXT_PATTERN},
        ),
        AfterValidator(_content),
    ]


class AlertQueued(BaseModel):
    id: uuid.UUID
    status: Literal["queued", "deduplicated"]


class AlertOut(BaseModel):
    id: uuid.UUID
    status: Literal["queued", "sending", "sent", "failed"]
    attempts: int
    last_error: str | None
