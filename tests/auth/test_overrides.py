"""Auth's password hashing is reached through PasswordHashingDep: a test can swap it for other parameters."""

from __future__ import annotations

import uuid

import asyncpg

from app.core.deps import get_password_hashing
from app.core.security import PasswordHashing
from tests.support import db as dbsupport


async def test_password_hashing_is_swapped_through_dependency_overrides(make_client, database_url) -> None:
    cheap = PasswordHashing(time_cost=1, memory_cost=8 * 1024, max_workers=1)

    async def hashing() -> PasswordHashing:
        return cheap

    try:
        client = await make_client(
            app_hook=lambda app: app.dependency_overrides.update({get_password_hashing: hashing})
        )
        email, password = f"o-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
        assert (
            await client.post("/v1/auth/signup", json={"email": email, "password": password})
        ).status_code == 201
        login = await client.post("/v1/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
        try:
            stored = await conn.fetchval("SELECT password_hash FROM users WHERE email = $1", email)
        finally:
            await conn.close()
        assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")  # the swapped hasher did the work
    finally:
        cheap.close()
