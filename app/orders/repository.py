"""All orders SQL. Every statement that changes an order's status also writes its ``order_events`` row,
in the same statement (a data-modifying CTE), so a transition and its audit record cannot be split.

Concurrency: an order row carries ``version``; every change is ``UPDATE … WHERE id = … AND version = …``,
so the request that placed the order (phase (c)), the reconciler and a cancel never overwrite each
other's newer state — the loser sees no row and re-reads. The reconciler takes due orders with
``FOR UPDATE SKIP LOCKED`` and leases them (pushes ``next_reconcile_at`` forward) in one statement, so
several processes share the work and none looks at an order another is handling.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Interval, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.alerts.repository import FILL_ALERT_SQL
from app.core.idempotency import IdempotencyRecord
from app.orders import states

_COLUMNS = (
    "id, user_id, idempotency_key, idempotency_claim, client_order_id, provider, symbol, side, type, time_in_force, qty, "
    "limit_price, status, filled_qty, filled_avg_price, broker_order_id, broker_status, reject_reason, "
    "version, reconcile_attempts, next_reconcile_at, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class OrderRow:
    id: uuid.UUID
    user_id: uuid.UUID
    idempotency_key: str
    idempotency_claim: uuid.UUID
    client_order_id: str
    provider: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    status: str
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    broker_order_id: str | None
    broker_status: str | None
    reject_reason: str | None
    version: int
    reconcile_attempts: int
    next_reconcile_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


def _row(row: Any) -> OrderRow:
    return OrderRow(**row._asdict())


@dataclass(frozen=True, slots=True)
class Change:
    """A new state for an order: the values to write and the event that explains them."""

    status: str
    reason: str
    filled_qty: Decimal | None = None
    filled_avg_price: Decimal | None = None
    broker_order_id: str | None = None
    broker_status: str | None = None
    reject_reason: str | None = None
    detail: str | None = None
    # None: the reconciler has nothing more to do with it; else when it should look again.
    next_reconcile_in: dt.timedelta | None = None
    # The alert that tells the user of a fill (id, content, content hash), queued in the same statement
    # when the user has a Discord webhook; None when the change fills nothing.
    fill_alert: tuple[uuid.UUID, str, str] | None = None


_INSERT_SUBMITTING = text(
    f"""
    WITH o AS (
        INSERT INTO orders (user_id, idempotency_key, idempotency_claim, client_order_id, provider, symbol, side, type,
                            time_in_force, qty, limit_price, status, filled_qty, next_reconcile_at,
                            created_at, updated_at)
        SELECT CAST(:user_id AS uuid), CAST(:key AS varchar), CAST(:claim AS uuid),
               CAST(:client_order_id AS varchar),
               CAST(:provider AS varchar), CAST(:symbol AS varchar), CAST(:side AS varchar),
               CAST(:type AS varchar), CAST(:time_in_force AS varchar), CAST(:qty AS numeric),
               CAST(:limit_price AS numeric), '{states.SUBMITTING}', 0, now() + :first_check, now(), now()
        WHERE {{held}}
        RETURNING {_COLUMNS}
    ), e AS (
        INSERT INTO order_events (order_id, from_status, to_status, reason, filled_qty, created_at)
        SELECT id, NULL, status, 'submitted', filled_qty, now() FROM o
    )
    SELECT {_COLUMNS} FROM o
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
)


@functools.cache
def _insert_submitting(held_sql: str) -> Any:
    """Phase (a)'s statement under the claim condition, built once (SQLAlchemy caches its compiled form)."""
    return text(_INSERT_SUBMITTING.text.replace("{held}", held_sql)).bindparams(
        bindparam("first_check", type_=Interval())
    )


_CHANGE = text(
    f"""
    WITH o AS (
        UPDATE orders SET
            status = CAST(:status AS varchar),
            filled_qty = coalesce(CAST(:filled_qty AS numeric), filled_qty),
            filled_avg_price = coalesce(CAST(:filled_avg_price AS numeric), filled_avg_price),
            broker_order_id = coalesce(CAST(:broker_order_id AS varchar), broker_order_id),
            broker_status = coalesce(CAST(:broker_status AS varchar), broker_status),
            reject_reason = CASE WHEN CAST(:status AS varchar) = '{states.REJECTED}' THEN CAST(:reject_reason AS text) END,
            next_reconcile_at = now() + :next_reconcile_in,
            reconcile_attempts = CASE WHEN CAST(:status AS varchar) = status THEN reconcile_attempts ELSE 0 END,
            version = version + 1,
            updated_at = :updated_at
        WHERE id = :id AND version = :version
        RETURNING {_COLUMNS}, CAST(:from_status AS varchar) AS from_status
    ), e AS (
        INSERT INTO order_events (order_id, from_status, to_status, reason, detail, filled_qty, created_at)
        SELECT id, from_status, status, CAST(:reason AS varchar), CAST(:detail AS text), filled_qty, now() FROM o
    ), fa AS ({FILL_ALERT_SQL} WHERE CAST(:fill_alert_id AS uuid) IS NOT NULL
    )
    SELECT {_COLUMNS} FROM o
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
).bindparams(
    bindparam("next_reconcile_in", type_=Interval()),
    bindparam("updated_at", type_=DateTime(timezone=True)),
)


@functools.cache
def _change_and_complete(complete_sql: str) -> Any:
    """``_CHANGE`` plus the Idempotency-Key completion, in one statement: the completion runs only if the
    order changed, and reports whether it stored the answer."""
    body = _CHANGE.text.rsplit("SELECT", 1)[0]
    return text(
        f"""{body}, k AS (
            {complete_sql} AND EXISTS (SELECT 1 FROM o) RETURNING 1
        )
        SELECT {_COLUMNS}, (SELECT count(*) FROM k) AS completed FROM o
        """  # nosec B608 # complete_sql is IdempotencyRecord.COMPLETE_SQL, a constant; values are bound
    ).bindparams(
        bindparam("next_reconcile_in", type_=Interval()),
        bindparam("updated_at", type_=DateTime(timezone=True)),
        *IdempotencyRecord.COMPLETION_TYPES,
    )


_RESCHEDULE = text(
    "UPDATE orders SET next_reconcile_at = now() + :after WHERE id = :id AND version = :version"
).bindparams(bindparam("after", type_=Interval()))

_CLAIM_DUE = text(
    f"""
    UPDATE orders SET next_reconcile_at = now() + :lease, reconcile_attempts = reconcile_attempts + 1
    WHERE id IN (
        SELECT id FROM orders
        WHERE next_reconcile_at <= now() AND provider = :provider
        ORDER BY next_reconcile_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING {_COLUMNS}
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
).bindparams(bindparam("lease", type_=Interval()))

_PENDING_COUNT = text(
    f"SELECT count(*) FROM orders WHERE status IN ('{states.SUBMITTING}', '{states.PENDING_RECONCILIATION}')"  # nosec B608 # status names are module constants
)


def _change_params(order: OrderRow, change: Change, at: dt.datetime | None) -> dict[str, Any]:
    states.check_transition(order.status, change.status)
    return {
        "id": order.id,
        "version": order.version,
        "from_status": order.status,
        "status": change.status,
        "reason": change.reason,
        "detail": change.detail,
        "filled_qty": change.filled_qty,
        "filled_avg_price": change.filled_avg_price,
        "broker_order_id": change.broker_order_id,
        "broker_status": change.broker_status,
        "reject_reason": change.reject_reason,
        "next_reconcile_in": change.next_reconcile_in,
        "updated_at": at or dt.datetime.now(dt.UTC),
        "fill_alert_id": change.fill_alert[0] if change.fill_alert else None,
        "fill_alert_content": change.fill_alert[1] if change.fill_alert else None,
        "fill_alert_hash": change.fill_alert[2] if change.fill_alert else None,
    }


def predict(order: OrderRow, change: Change, at: dt.datetime) -> OrderRow:
    """The row ``change`` at ``at`` makes of ``order`` (``_CHANGE``'s arithmetic, in Python), so that a
    response can be rendered before the statement that stores it runs."""
    return dataclasses.replace(
        order,
        status=change.status,
        filled_qty=order.filled_qty if change.filled_qty is None else change.filled_qty,
        filled_avg_price=order.filled_avg_price
        if change.filled_avg_price is None
        else change.filled_avg_price,
        broker_order_id=order.broker_order_id if change.broker_order_id is None else change.broker_order_id,
        broker_status=order.broker_status if change.broker_status is None else change.broker_status,
        reject_reason=change.reject_reason if change.status == states.REJECTED else None,
        version=order.version + 1,
        updated_at=at,
    )


class OrderRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_submitting(
        self,
        *,
        held_sql: str,
        held_params: dict[str, Any],
        first_check: dt.timedelta,
        **values: Any,
    ) -> OrderRow | None:
        """Phase (a): the order as ``submitting`` and its first event, only while ``held_sql`` (the
        Idempotency-Key claim) holds. None when the claim was lost."""
        stmt = _insert_submitting(held_sql)
        result = await self.session.execute(stmt, {**values, **held_params, "first_check": first_check})
        row = result.first()
        return None if row is None else _row(row)

    async def change(
        self, order: OrderRow, change: Change, *, at: dt.datetime | None = None
    ) -> OrderRow | None:
        """Move ``order`` (at its version) to ``change`` at ``at`` (default now), with its event; None if it
        changed meanwhile. Raises ``states.IllegalTransition`` for a change the state machine forbids."""
        row = (await self.session.execute(_CHANGE, _change_params(order, change, at))).first()
        return None if row is None else _row(row)

    async def change_and_complete(
        self, order: OrderRow, change: Change, *, at: dt.datetime, completion: dict[str, Any]
    ) -> tuple[OrderRow | None, bool]:
        """``change`` and, in the same statement, the Idempotency-Key completion whose bind parameters are
        ``completion`` (``PreparedCompletion.params``): (the changed order or None, whether it completed)."""
        stmt = _change_and_complete(IdempotencyRecord.COMPLETE_SQL)
        row = (await self.session.execute(stmt, {**_change_params(order, change, at), **completion})).first()
        if row is None:
            return None, False
        values = row._asdict()
        completed = bool(values.pop("completed"))
        return OrderRow(**values), completed

    async def reschedule(self, order: OrderRow, after: dt.timedelta | None) -> None:
        """Look at ``order`` again after ``after`` (None: never again); no state change, no event."""
        await self.session.execute(_RESCHEDULE, {"id": order.id, "version": order.version, "after": after})

    async def claim_due(self, *, provider: str, limit: int, lease: dt.timedelta) -> list[OrderRow]:
        """Up to ``limit`` orders due for reconciliation, leased for ``lease`` (skipping locked ones)."""
        result = await self.session.execute(
            _CLAIM_DUE, {"provider": provider, "limit": limit, "lease": lease}
        )
        return [_row(r) for r in result]

    async def get(self, *, user_id: uuid.UUID, order_id: uuid.UUID) -> OrderRow | None:
        result = await self.session.execute(
            text(f"SELECT {_COLUMNS} FROM orders WHERE id = :id AND user_id = :user_id"),  # nosec B608 # _COLUMNS is a module constant; values are bound
            {"id": order_id, "user_id": user_id},
        )
        row = result.first()
        return None if row is None else _row(row)

    async def get_by_id(self, order_id: uuid.UUID) -> OrderRow | None:
        result = await self.session.execute(
            text(f"SELECT {_COLUMNS} FROM orders WHERE id = :id"),  # nosec B608 # _COLUMNS is a module constant; values are bound
            {"id": order_id},
        )
        row = result.first()
        return None if row is None else _row(row)

    async def page(
        self, *, user_id: uuid.UUID, limit: int, after: tuple[dt.datetime, uuid.UUID] | None
    ) -> list[OrderRow]:
        """Newest first, keyset-paginated on (created_at, id)."""
        where = "user_id = :user_id"
        params: dict[str, Any] = {"user_id": user_id, "limit": limit}
        if after is not None:
            where += " AND (created_at, id) < (:after_at, :after_id)"
            params.update(after_at=after[0], after_id=after[1])
        result = await self.session.execute(
            text(
                f"SELECT {_COLUMNS} FROM orders WHERE {where} ORDER BY created_at DESC, id DESC LIMIT :limit"  # nosec B608 # _COLUMNS and the two WHERE fragments are constants; values are bound
            ),
            params,
        )
        return [_row(r) for r in result]

    async def pending_count(self) -> int:
        return int((await self.session.execute(_PENDING_COUNT)).scalar_one())
