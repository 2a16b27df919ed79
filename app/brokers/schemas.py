from __future__ import annotations

import datetime as dt

from pydantic import BaseModel


class AuthorizeOut(BaseModel):
    authorize_url: str


class ConnectionOut(BaseModel):
    provider: str
    connected: bool
    connected_at: dt.datetime | None
