"""Annotated dependency aliases so routes read like sentences."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User
from app.core.config import Settings
from app.core.db import get_session
from app.core.security import get_current_user

# scope="function": the commit runs when the endpoint returns, *before* the response is sent, so a
# failed commit is answered as an error instead of after a success was already reported.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_settings(request: Request) -> Settings:  # async: a sync dependency costs a thread-pool hop
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


# The authenticated user (401 problem+json otherwise); see app/core/security.py.
CurrentUser = Annotated[User, Depends(get_current_user)]
CurrentUserDep = CurrentUser
