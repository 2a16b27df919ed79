from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field


class AuthorizeOut(BaseModel):
    authorize_url: str


class CompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=2048)
    state: str = Field(min_length=1, max_length=256)


class ConnectionOut(BaseModel):
    provider: str
    connected: bool
    connected_at: dt.datetime | None
