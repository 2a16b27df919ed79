"""Test databases on a real PostgreSQL: one per test run (and per xdist worker), migrated once."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from app.core.config import normalize_database_url

ROOT = Path(__file__).resolve().parents[2]


def admin_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "No PostgreSQL for the tests: run `make test` (it starts an embedded one) or export TEST_DATABASE_URL"
        )
    return url


def asyncpg_dsn(url: str) -> str:
    return normalize_database_url(url, driver=None)


def sqlalchemy_url(url: str) -> str:
    return normalize_database_url(url)


def with_database(url: str, name: str) -> str:
    return make_url(sqlalchemy_url(url)).set(database=name).render_as_string(hide_password=False)


async def create_database(prefix: str = "tradedesk_test") -> tuple[str, str]:
    """Create a fresh database; return (name, sqlalchemy url)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"{prefix}_{worker}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(admin_url()))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, with_database(admin_url(), name)


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url()))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["skip_logging_config"] = True
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
