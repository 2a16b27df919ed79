"""A loopback fake of the Alpaca Trading API v2's order endpoints, on ``tests.outbound.fake_provider``, that
keeps orders by ``client_order_id`` as the real broker does (a second POST with the same id is refused as a
duplicate, a lookup answers the stored order or a 404) and records every request it receives. Used by the
process tests that put real servers in front of a broker (tests/orders/test_processes.py,
tests/core/test_two_instances.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.outbound.fake_provider import FakeProvider, Hang, Recorded, Reply
from tests.providers.broker.test_alpaca import order_json

POST_PATH = r"/v2/orders"
BY_CLIENT_PATH = r"/v2/orders:by_client_order_id"
ORDER_PATH = r"/v2/orders/[^/]+"


@dataclass
class FakeAlpacaTrading:
    """Alpaca's order endpoints on a ``FakeProvider``, with the broker's own bookkeeping: orders by
    ``client_order_id``. ``post_delays`` delay the next answers to POST /v2/orders (one per POST, in
    turn). With ``hold_posts`` a POST is received and never answered, and its order is not visible yet
    (the broker is still processing it) until ``finish_held(status)``."""

    fake: FakeProvider
    tokens: set[str] = field(default_factory=set)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    post_delays: list[float] = field(default_factory=list)
    hold_posts: bool = False

    def __post_init__(self) -> None:
        self.fake.on(POST_PATH, self._post).on(BY_CLIENT_PATH, self._by_client).on(ORDER_PATH, self._by_id)

    @property
    def posts(self) -> list[Recorded]:
        return [r for r in self.fake.seen(POST_PATH) if r.method == "POST"]

    def lookups(self, client_order_id: str) -> list[Recorded]:
        return [
            r for r in self.fake.seen(BY_CLIENT_PATH) if r.query.get("client_order_id") == client_order_id
        ]

    def finish_held(self, *, status: str) -> None:
        """The broker finishes processing the held orders: they exist from now on, with ``status``."""
        for coid, order in self.held.items():
            if status == "filled":
                order.update(
                    filled_qty=order["qty"], filled_avg_price="190.01", filled_at=_now(), updated_at=_now()
                )
            self.orders[coid] = {**order, "status": status}
        self.held.clear()

    def _unauthorized(self, request: Recorded) -> Reply | None:
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens:
            return Reply(401, {"code": 40110000, "message": "access key verification failed"})
        return None

    def _post(self, request: Recorded) -> Reply | Hang:
        if request.method != "POST":
            return Reply(404, {"code": 40410000, "message": "not in this fake"})
        if refused := self._unauthorized(request):
            return refused
        body = json.loads(request.body)
        coid = body["client_order_id"]
        if coid in self.orders or coid in self.held:
            return Reply(422, {"code": 40010001, "message": "client_order_id must be unique"})
        order = order_json(
            id=str(uuid.uuid4()),
            client_order_id=coid,
            created_at=_now(),
            updated_at=_now(),
            submitted_at=_now(),
            symbol=body["symbol"],
            qty=body["qty"],
            side=body["side"],
            type=body["type"],
            order_type=body["type"],
            time_in_force=body["time_in_force"],
            limit_price=body.get("limit_price"),
            status="accepted",
        )
        if self.hold_posts:
            self.held[coid] = order
            return Hang()
        self.orders[coid] = order
        return Reply(200, order, delay=self.post_delays.pop(0) if self.post_delays else 0.0)

    def _by_client(self, request: Recorded) -> Reply:
        if refused := self._unauthorized(request):
            return refused
        found = self.orders.get(request.query.get("client_order_id", ""))
        return Reply(200, found) if found else Reply(404, {"code": 40410000, "message": "order not found"})

    def _by_id(self, request: Recorded) -> Reply:
        if refused := self._unauthorized(request):
            return refused
        wanted = request.path.rsplit("/", 1)[1]
        found = next((o for o in self.orders.values() if o["id"] == wanted), None)
        return Reply(200, found) if found else Reply(404, {"code": 40410000, "message": "order not found"})


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@asynccontextmanager
async def fake_alpaca_trading() -> AsyncIterator[FakeAlpacaTrading]:
    """A started fake broker, stopped on exit."""
    fake = await FakeProvider().start()
    try:
        yield FakeAlpacaTrading(fake)
    finally:
        await fake.stop()
