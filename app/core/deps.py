"""Annotated dependency aliases for the shared objects the lifespan builds, so routes read like sentences.

Every route reaches a shared object (session, database, settings, limiter, password hashing) through
one of these, never through ``request.app.state``; a feature's own dependencies (the current user,
its providers) live in that feature's ``deps.py``. Each getter is ``async``: a plain ``def``
dependency would cost a thread-pool hop on every request. Tests swap any of them with
``app.dependency_overrides[get_x] = ...``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.db import Database, get_session
from app.core.ratelimit import RateLimiter
from app.core.security import PasswordHashing

# scope="function": the commit runs when the endpoint returns, *before* the response is sent, so a
# failed commit is answered as an error instead of after a success was already reported.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


async def get_password_hashing(request: Request) -> PasswordHashing:
    passwords: PasswordHashing = request.app.state.passwords
    return passwords


SettingsDep = Annotated[Settings, Depends(get_settings)]
# For work that must commit on its own: ``async with database.own_transaction() as session`` (app/core/db.py).
DatabaseDep = Annotated[Database, Depends(get_database)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]
PasswordHashingDep = Annotated[PasswordHashing, Depends(get_password_hashing)]
