"""Helpers for the orders tests: a user with a token, order bodies, fresh keys, direct table reads and
writes (a linked Alpaca account, an order made due for the reconciler), and the checks the process tests
share (a trader linked to the fake broker, the idempotency rows, the "in flight" 409)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import httpx

from app.core.crypto import TokenCipher
from tests.auth.helpers import bearer, fetch, signup_and_token
from tests.orders.alpaca_fake import FakeAlpacaTrading
from tests.support.problems import assert_problem
from tests.support.settings import TEST_FERNET_KEY

IN_FLIGHT_TYPE = "/idempotency-in-flight"

_keys = itertools.count(1)


def new_key(prefix: str = "key") -> str:
    return f"{prefix}-{next(_keys):06d}-{uuid.uuid4().hex[:8]}"


def market(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "symbol": "AAPL",
        "qty": "10",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
    }
    body.update(overrides)
    return body


def limit(price: Any, **overrides: Any) -> dict[str, Any]:
    return market(**{"type": "limit", "limit_price": price, "time_in_force": "gtc", **overrides})


async def trader(client: httpx.AsyncClient) -> tuple[dict[str, Any], dict[str, str]]:
    """A new user and the Authorization header of their token."""
    user, token = await signup_and_token(client)
    return user, bearer(token)


async def place(
    client: httpx.AsyncClient, auth: dict[str, str], body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    return await client.post("/v1/orders", json=body, headers={**auth, "Idempotency-Key": key or new_key()})


async def events(database_url: str, order_id: str) -> list[tuple[str | None, str, str]]:
    rows = await fetch(
        database_url,
        "SELECT from_status, to_status, reason FROM order_events WHERE order_id = $1 ORDER BY id",
        uuid.UUID(order_id),
    )
    return [(r["from_status"], r["to_status"], r["reason"]) for r in rows]


async def order_rows(database_url: str) -> list[Any]:
    return await fetch(database_url, "SELECT * FROM orders ORDER BY created_at")


async def link_alpaca(database_url: str, user_id: str, token: str) -> None:
    """Link an Alpaca account the way the OAuth callback stores it: one broker_connections row with the
    access token encrypted under the test Fernet key."""
    cipher = TokenCipher([TEST_FERNET_KEY])
    await fetch(
        database_url,
        "INSERT INTO broker_connections (user_id, provider, access_token_encrypted, scope) "
        "VALUES ($1, 'alpaca', $2, 'trading')",
        uuid.UUID(user_id),
        cipher.encrypt(token),
    )


async def order_row(database_url: str, order_id: str) -> Any:
    rows = await fetch(database_url, "SELECT * FROM orders WHERE id = $1", uuid.UUID(order_id))
    assert len(rows) == 1, rows
    return rows[0]


async def make_due(database_url: str, order_id: str, *, past_grace: bool = False) -> None:
    """Make the order due for the next reconciler pass; with ``past_grace``, also move its creation ten
    minutes back (time passing beyond RECONCILE_GRACE_SECONDS, without sleeping)."""
    age = "created_at - interval '10 minutes'" if past_grace else "created_at"
    await fetch(
        database_url,
        f"UPDATE orders SET next_reconcile_at = now(), created_at = {age} WHERE id = $1",
        uuid.UUID(order_id),
    )


async def linked_trader(
    client: httpx.AsyncClient, database_url: str, alpaca: FakeAlpacaTrading
) -> tuple[uuid.UUID, dict[str, str]]:
    """A user signed up and logged in over HTTP, with an Alpaca account linked (an encrypted token row)
    whose token the fake broker accepts; the user's id and Authorization header."""
    user, token = await signup_and_token(client)
    broker_token = f"tok-{uuid.uuid4().hex}"
    await link_alpaca(database_url, user["id"], broker_token)
    alpaca.tokens.add(broker_token)
    return uuid.UUID(user["id"]), bearer(token)


async def idempotency_rows(database_url: str, user_id: uuid.UUID) -> list[Any]:
    return await fetch(
        database_url, "SELECT key, state, response_status FROM idempotency_keys WHERE user_id = $1", user_id
    )


def assert_in_flight_conflict(r: httpx.Response) -> None:
    """The 409 of a key whose first request is still running: problem+json, Retry-After, not a replay."""
    body = assert_problem(r, 409)
    assert body["type"].endswith(IN_FLIGHT_TYPE), body
    assert int(r.headers["retry-after"]) >= 1, r.headers
    assert "idempotent-replayed" not in r.headers
