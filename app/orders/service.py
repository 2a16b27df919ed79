"""Order rules: placement in atomic phases, reads, cancel and reconciliation. No HTTP, no commits of its
own beyond the named phases (``Database.own_transaction``).

Placement (Brandur Leach's atomic phases; the Idempotency-Key claim was taken by the dependency first):

a. **intent** — one statement inserts the order as ``submitting`` and its first event, only while the
   request still holds its key (``IdempotencyRecord.HELD_SQL``), and commits. From here the key is kept
   in flight whatever happens: the reconciler owns the order if this request dies.
b. **the broker call**, outside any transaction and with no pooled connection held, under the broker's
   deadline and breaker. Its outcome is classified (``app.providers.broker.base``):
   a broker order → its status (201); a refusal → ``rejected`` (422 with the broker's reason);
   nothing sent (connection failed first, breaker open) → ``rejected`` and the key released (503 +
   Retry-After: a retry with the same key is a new attempt); unknown → ``pending_reconciliation`` (202).
c. **result** — one transaction writes the new state with its event and stores the response for the key.

A crash or a bug between (a) and (c) leaves a ``submitting`` row with ``next_reconcile_at`` set: the
reconciler looks it up by ``client_order_id`` and settles it, completing the key under the claim the order
was placed with. Only a definitive answer ever ends an order without asking the broker.

``client_order_id`` is ``td-`` + 45 hex characters of an HMAC (key derived from JWT_SECRET) of the user,
the Idempotency-Key and the key's claim: the same on every retry of one key (retries reach the broker
only through this one claim), new when the key is used again after it expired or was released because
nothing was sent — and it reveals neither the user nor the key to the broker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from app.alerts import service as alerts_service
from app.brokers import service as brokers_service
from app.core.config import Settings
from app.core.crypto import TokenCipher
from app.core.db import Database
from app.core.errors import Conflict, NotFound, Unprocessable, log_exception, problem_body
from app.core.http import CircuitOpenError, UpstreamError
from app.core.idempotency import (
    IdempotencyClaimLost,
    IdempotencyRecord,
    complete_in_flight,
    release_in_flight,
)
from app.core.pagination import SignedCursor
from app.orders import states
from app.orders.metrics import (
    ORDERS,
    ORDERS_PENDING,
    ORDERS_RECONCILED,
    ORDERS_REVIVED,
    RECONCILE_DURATION,
    RECONCILE_RUNS,
)
from app.orders.repository import Change, OrderRepository, OrderRow, predict
from app.orders.schemas import OrderCreate, OrderOut, OrdersPage
from app.providers.broker import (
    BrokerOrder,
    BrokerOrderStatus,
    BrokerOutcomeUnknown,
    BrokerProvider,
    BrokerRejected,
    OrderRequest,
    OrderSide,
    OrderType,
    TimeInForce,
)

log = logging.getLogger("tradedesk.orders")

CLIENT_ORDER_ID_PREFIX = "td-"
_CLIENT_ORDER_KEY_LABEL = "tradedesk/orders/client-order-id/v1"
_CURSOR_KEY_LABEL = "tradedesk/orders/cursor/v1"
# How long the reconciler keeps asking about an order it rejected after the grace period, so that a late
# appearance at the broker is revived rather than lost; and the longest pause between two looks.
REVIVAL_WATCH = dt.timedelta(days=1)
MAX_BACKOFF = dt.timedelta(minutes=10)
RECONCILE_BATCH = 100
RECONCILE_CONCURRENCY = 8

AccountLookup = Callable[[uuid.UUID], Awaitable[str | None]]


class BrokerAccountMissing(Conflict):
    slug = "broker-account-missing"


class OrderNotCancelable(Conflict):
    slug = "order-not-cancelable"


class BrokerInconsistent(Conflict):
    slug = "broker-inconsistent"


@dataclass(frozen=True, slots=True)
class OrderPolicy:
    """What the order flows need from the settings, computed once at startup."""

    provider: str
    client_order_key: bytes
    cursor_key: bytes
    first_check: dt.timedelta  # a submitting order is the reconciler's after this (a crashed request)
    interval: dt.timedelta
    grace: dt.timedelta

    @classmethod
    def from_settings(cls, settings: Settings, *, provider: str) -> OrderPolicy:
        return cls(
            provider=provider,
            client_order_key=settings.derived_key(_CLIENT_ORDER_KEY_LABEL),
            cursor_key=settings.derived_key(_CURSOR_KEY_LABEL),
            # The broker call ends within its deadline; a request still "submitting" well after that died.
            first_check=dt.timedelta(seconds=settings.broker_timeout_seconds + 2),
            interval=dt.timedelta(seconds=settings.reconcile_interval_seconds),
            grace=dt.timedelta(seconds=settings.reconcile_grace_seconds),
        )

    def backoff(self, attempts: int) -> dt.timedelta:
        """The pause before the next look after ``attempts`` looks that changed nothing."""
        pause: dt.timedelta = self.interval * (2 ** min(max(attempts - 1, 0), 16))
        return min(pause, MAX_BACKOFF)


def client_order_id(*, key: bytes, user_id: uuid.UUID, idempotency_key: str, claim: uuid.UUID) -> str:
    """The broker's id for the order of one claim of (user, Idempotency-Key): 48 characters."""
    digest = hmac.new(
        key, b"%s\x00%s\x00%s" % (user_id.bytes, idempotency_key.encode(), claim.bytes), hashlib.sha256
    ).hexdigest()
    return CLIENT_ORDER_ID_PREFIX + digest[:45]


def broker_accounts(*, provider: str, database: Database, cipher: TokenCipher) -> AccountLookup:
    """How to reach a user's account at the broker: the paper account is the user's id; an Alpaca
    account is the user's linked OAuth token (None when not linked)."""
    if provider == "paper":

        async def paper(user_id: uuid.UUID) -> str | None:
            return str(user_id)

        return paper

    async def linked(user_id: uuid.UUID) -> str | None:
        return await brokers_service.access_token(database=database, cipher=cipher, user_id=user_id)

    return linked


def _text(value: Any) -> str | None:
    return None if value is None else format(value, "f")


def order_out(row: OrderRow) -> OrderOut:
    """The order as the API shows it (a submitting order reads ``pending_reconciliation``)."""
    return OrderOut(
        id=str(row.id),
        status=states.PENDING_RECONCILIATION if row.status == states.SUBMITTING else row.status,
        symbol=row.symbol,
        qty=format(row.qty, "f"),
        side=row.side,
        type=row.type,
        time_in_force=row.time_in_force,
        limit_price=_text(row.limit_price),
        filled_qty=format(row.filled_qty, "f"),
        filled_avg_price=_text(row.filled_avg_price),
        broker_order_id=row.broker_order_id,
        client_order_id=row.client_order_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        reject_reason=row.reject_reason,
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A placement's HTTP answer, as stored for the Idempotency-Key."""

    status_code: int
    content: Any
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/json"


def location(row: OrderRow) -> str:
    return f"/v1/orders/{row.id}"


def answer_for(row: OrderRow, *, refused: str | None = None) -> Answer:
    """201 with the order; 202 while its outcome is unknown; 422 problem+json when the broker refused it
    (``refused``: the broker's reason)."""
    headers = {"Location": location(row)}
    if refused is not None:
        body = problem_body(
            422,
            title="Order rejected by the broker",
            detail=f"The broker rejected the order: {refused}",
            slug="broker-rejected",
            errors=[{"field": "body", "message": refused}],
            extra={"order_id": str(row.id), "reason": refused},
        )
        return Answer(422, body, headers, "application/problem+json")
    status_code = 202 if row.status in states.UNKNOWN_OUTCOME else 201
    return Answer(status_code, order_out(row), headers)


def log_transition(before: str | None, after: OrderRow, reason: str, **extra: Any) -> None:
    """One structured line per transition (the event row is written with it)."""
    log.info(
        "order transition",
        extra={
            "order_id": str(after.id),
            "user_id": str(after.user_id),
            "from_status": before,
            "to_status": after.status,
            "reason": reason,
            "filled_qty": format(after.filled_qty, "f"),
            **extra,
        },
    )


def _change_from_broker(found: BrokerOrder, *, reason: str, policy: OrderPolicy, order: OrderRow) -> Change:
    """The change that makes ``order`` what the broker reports; a fill (more filled than before) queues
    an alert for the user's Discord webhook in the same statement."""
    open_ = not found.status.is_terminal
    fill_alert = None
    if found.filled_qty > order.filled_qty:
        content = alerts_service.fill_alert_content(
            side=order.side,
            symbol=order.symbol,
            filled_qty=found.filled_qty,
            qty=order.qty,
            avg_price=found.filled_avg_price,
            order_id=order.id,
        )
        fill_alert = (uuid.uuid4(), content, alerts_service.content_hash(content))
    return Change(
        status=found.status.value,
        reason=reason,
        filled_qty=found.filled_qty,
        filled_avg_price=found.filled_avg_price,
        broker_order_id=found.broker_order_id,
        broker_status=found.raw_status[:32],
        reject_reason="rejected by the broker" if found.status is BrokerOrderStatus.REJECTED else None,
        next_reconcile_in=policy.interval if open_ else None,
        fill_alert=fill_alert,
    )


# ------------------------------------------------------------------------------------------ placement
async def place_order(
    *,
    database: Database,
    broker: BrokerProvider,
    policy: OrderPolicy,
    record: IdempotencyRecord,
    user_id: uuid.UUID,
    order_in: OrderCreate,
    access_token: str,
) -> Response:
    """Place one order for ``record``'s Idempotency-Key in atomic phases; the stored answer is returned."""
    coid = client_order_id(
        key=policy.client_order_key, user_id=user_id, idempotency_key=record.key, claim=record.claim_token
    )
    request = OrderRequest(
        symbol=order_in.symbol,
        qty=order_in.qty,
        side=OrderSide(order_in.side),
        type=OrderType(order_in.type),
        time_in_force=TimeInForce(order_in.time_in_force),
        client_order_id=coid,
        limit_price=order_in.limit_price,
    )
    # (a) intent, under the key's claim.
    async with database.own_transaction(single_statement=True) as session:
        order = await OrderRepository(session).insert_submitting(
            held_sql=IdempotencyRecord.HELD_SQL,
            held_params=record.held_params(),
            first_check=policy.first_check,
            user_id=user_id,
            key=record.key,
            claim=record.claim_token,
            client_order_id=coid,
            provider=policy.provider,
            symbol=request.symbol,
            side=request.side.value,
            type=request.type.value,
            time_in_force=request.time_in_force.value,
            qty=request.qty,
            limit_price=request.limit_price,
        )
    if order is None:
        raise IdempotencyClaimLost(
            "Another request took over this Idempotency-Key; retry to get its answer.",
            headers={"Retry-After": "1"},
        )
    record.keep()  # the order exists: from here on the key stays in flight until (c) or the reconciler
    log_transition(None, order, "submitted", client_order_id=coid, provider=policy.provider)

    # (b) the broker, outside any transaction.
    release = False
    refused: str | None = None
    failure: UpstreamError | None = None
    started = time.perf_counter()
    try:
        placed = await broker.submit_order(access_token=access_token, order=request)
    except BrokerRejected as exc:
        change = Change(
            status=states.REJECTED,
            reason=states.REJECTED_BY_BROKER,
            reject_reason=exc.reason,
            detail=f"HTTP {exc.status_code}" + (f" code {exc.code}" if exc.code is not None else ""),
        )
        refused, outcome = exc.reason, "rejected"
    except BrokerOutcomeUnknown as exc:
        change = Change(
            status=states.PENDING_RECONCILIATION,
            reason="outcome_unknown",
            detail=exc.reason[:200],
            next_reconcile_in=policy.interval,
        )
        outcome = "pending_reconciliation"
    except UpstreamError as exc:
        if exc.maybe_sent:  # every maybe-sent failure is BrokerOutcomeUnknown; classify a stray one the same
            change = Change(
                status=states.PENDING_RECONCILIATION,
                reason="outcome_unknown",
                detail=type(exc).__name__,
                next_reconcile_in=policy.interval,
            )
            outcome = "pending_reconciliation"
        else:
            reason = "circuit open" if isinstance(exc, CircuitOpenError) else "broker unreachable"
            change = Change(
                status=states.REJECTED,
                reason=states.REJECTED_NOT_SENT,
                reject_reason=f"not sent: {reason}",
                detail=type(exc).__name__,
            )
            release, failure, outcome = True, exc, "unavailable"
    else:
        change = _change_from_broker(placed, reason="placed", policy=policy, order=order)
        outcome = "placed"
    elapsed = time.perf_counter() - started

    # (c) result, with the stored answer, in one statement; or, when nothing was sent, the rejection
    # with the key released (a transaction: rare, and release is the core's own statement).
    if release:
        async with database.own_transaction() as session:
            repo = OrderRepository(session)
            updated = await repo.change(order, change)
            if updated is not None:
                log_transition(order.status, updated, change.reason, broker_seconds=round(elapsed, 4))
                await release_in_flight(
                    session, user_id=user_id, key=record.key, claim_token=record.claim_token
                )
        if updated is None:  # the reconciler settled it first: its state stands; answer it
            response = await _answer_current(database, record, order.id)
            failure = None
    else:
        at = dt.datetime.now(dt.UTC)
        answer = answer_for(predict(order, change, at), refused=refused)
        prepared = record.prepare_completion(
            status_code=answer.status_code,
            content=answer.content,
            media_type=answer.media_type,
            headers=answer.headers,
        )
        async with database.own_transaction(single_statement=True) as session:
            updated, completed = await OrderRepository(session).change_and_complete(
                order, change, at=at, completion=prepared.params
            )
        if updated is None:  # the reconciler settled it first (this request outlived first_check)
            response = await _answer_current(database, record, order.id)
        else:
            log_transition(order.status, updated, change.reason, broker_seconds=round(elapsed, 4))
            if not completed:  # the key expired or was purged under us: the order stands, unanswered
                raise IdempotencyClaimLost(
                    "This Idempotency-Key expired while the order was placed; read the order with "
                    f"GET {location(updated)}.",
                    headers={"Retry-After": "1"},
                )
            response = record.completed(prepared)
    ORDERS.labels(outcome).inc()
    if failure is not None:
        raise failure
    return response


async def _answer_current(database: Database, record: IdempotencyRecord, order_id: uuid.UUID) -> Response:
    """Answer with the order as it is now (someone else moved it first), storing that for the key; the
    reconciler usually completed the key already, and then this is 409 (the retry replays its answer)."""
    async with database.own_transaction() as session:
        current = await OrderRepository(session).get_by_id(order_id)
        if current is None:  # orders are never deleted but with their user
            raise RuntimeError(f"order {order_id} vanished while its key was held")
        answer = answer_for(current)
        return await record.complete(
            session,
            status_code=answer.status_code,
            content=answer.content,
            media_type=answer.media_type,
            headers=answer.headers,
        )


# ------------------------------------------------------------------------------------------ reads
def _cursor(policy: OrderPolicy) -> SignedCursor:
    return SignedCursor(policy.cursor_key)


async def get_order(*, database: Database, user_id: uuid.UUID, order_id: uuid.UUID) -> OrderOut:
    """The user's order; 404 for an unknown id or another user's order."""
    async with database.own_transaction(single_statement=True) as session:
        row = await OrderRepository(session).get(user_id=user_id, order_id=order_id)
    if row is None:
        raise NotFound("No such order.")
    return order_out(row)


async def list_orders(
    *, database: Database, policy: OrderPolicy, user_id: uuid.UUID, limit: int, cursor: str | None
) -> OrdersPage:
    """The user's orders, newest first."""
    cursors = _cursor(policy)
    after = cursors.decode(user_id, cursor) if cursor is not None else None
    async with database.own_transaction(single_statement=True) as session:
        rows = await OrderRepository(session).page(user_id=user_id, limit=limit + 1, after=after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = cursors.encode(user_id, page[-1].created_at, page[-1].id) if more else None
    return OrdersPage(items=[order_out(r) for r in page], next_cursor=next_cursor)


# ------------------------------------------------------------------------------------------ cancel
async def cancel_order(
    *,
    database: Database,
    broker: BrokerProvider,
    policy: OrderPolicy,
    user_id: uuid.UUID,
    order_id: uuid.UUID,
    access_token: str,
) -> OrderOut:
    """Ask the broker to cancel the user's order and record what it then reports."""
    async with database.own_transaction(single_statement=True) as session:
        order = await OrderRepository(session).get(user_id=user_id, order_id=order_id)
    if order is None:
        raise NotFound("No such order.")
    if order.status in states.TERMINAL:
        raise OrderNotCancelable(f"The order is {order.status}; only open orders can be canceled.")
    if order.broker_order_id is None:
        raise OrderNotCancelable(
            "The broker has not confirmed this order yet; retry once it has settled.",
            headers={"Retry-After": str(max(1, int(policy.interval.total_seconds())))},
        )
    try:
        accepted = await broker.cancel_order(access_token=access_token, broker_order_id=order.broker_order_id)
    except BrokerRejected as exc:
        raise Unprocessable(
            f"The broker refused to cancel the order: {exc.reason}",
            errors=[{"field": "path.order_id", "message": exc.reason}],
        ) from exc
    if not accepted:
        log.error("the broker does not know an order it confirmed", extra={"order_id": str(order.id)})
        raise BrokerInconsistent("The broker does not know this order; it is being reconciled.")
    try:
        found = await broker.get_order(access_token=access_token, broker_order_id=order.broker_order_id)
    except (UpstreamError, BrokerRejected) as exc:
        log_exception(log, "reading the order after a cancel failed; the reconciler will", exc)
        found = None
    if found is not None:
        change = _change_from_broker(found, reason="cancel_requested", policy=policy, order=order)
    else:
        change = Change(
            status=BrokerOrderStatus.PENDING_CANCEL.value,
            reason="cancel_requested",
            next_reconcile_in=dt.timedelta(0),
        )
    async with database.own_transaction(single_statement=True) as session:
        updated = await OrderRepository(session).change(order, change)
    if updated is None:  # the reconciler moved it meanwhile; its state stands, the cancel was sent
        return await get_order(database=database, user_id=user_id, order_id=order_id)
    log_transition(order.status, updated, change.reason)
    return order_out(updated)


# ------------------------------------------------------------------------------------------ reconcile
@dataclass(slots=True)
class ReconcileReport:
    looked_at: int = 0
    settled: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected_after_grace: int = 0
    revived: int = 0
    failed: int = 0
    matched: int = 0  # paper broker: resting orders the matcher settled
    pending: int = 0

    def count(self, result: str) -> None:
        setattr(self, result, getattr(self, result) + 1)
        ORDERS_RECONCILED.labels(result).inc()


async def reconcile(
    *,
    database: Database,
    broker: BrokerProvider,
    policy: OrderPolicy,
    accounts: AccountLookup,
    batch: int = RECONCILE_BATCH,
    max_batches: int = 10,
) -> ReconcileReport:
    """One reconciler pass: the paper matcher first, then every due order (leased so that passes in other
    processes skip it), at most ``max_batches`` batches of ``batch``."""
    started = time.perf_counter()
    report = ReconcileReport()
    try:
        matcher = getattr(broker, "match_open_orders", None)
        if matcher is not None:
            report.matched = await matcher()
        lease = max(policy.interval * 4, dt.timedelta(seconds=60))
        gate = asyncio.Semaphore(RECONCILE_CONCURRENCY)

        async def one(order: OrderRow) -> None:
            async with gate:
                await _reconcile_one(database, broker, policy, accounts, order, report)

        for _ in range(max_batches):
            async with database.own_transaction(single_statement=True) as session:
                due = await OrderRepository(session).claim_due(
                    provider=policy.provider, limit=batch, lease=lease
                )
            if not due:
                break
            await asyncio.gather(*(one(order) for order in due))
            if len(due) < batch:
                break
        async with database.own_transaction(single_statement=True) as session:
            report.pending = await OrderRepository(session).pending_count()
        ORDERS_PENDING.set(report.pending)
    except Exception:
        RECONCILE_RUNS.labels("error").inc()
        raise
    finally:
        RECONCILE_DURATION.observe(time.perf_counter() - started)
    RECONCILE_RUNS.labels("ok").inc()
    return report


async def _reconcile_one(
    database: Database,
    broker: BrokerProvider,
    policy: OrderPolicy,
    accounts: AccountLookup,
    order: OrderRow,
    report: ReconcileReport,
) -> None:
    report.looked_at += 1
    try:
        token = await accounts(order.user_id)
        if token is None:
            log.warning(
                "cannot reconcile an order: the user's broker account is no longer linked",
                extra={"order_id": str(order.id)},
            )
            await _reschedule(database, order, policy.backoff(order.reconcile_attempts))
            report.count("failed")
            return
        if order.status in states.UNKNOWN_OUTCOME or order.status == states.REJECTED:
            found = await broker.get_order_by_client_order_id(
                access_token=token, client_order_id=order.client_order_id
            )
        elif order.broker_order_id is not None:
            found = await broker.get_order(access_token=token, broker_order_id=order.broker_order_id)
        else:
            found = await broker.get_order_by_client_order_id(
                access_token=token, client_order_id=order.client_order_id
            )
    except (UpstreamError, BrokerRejected) as exc:
        log.warning(
            "order lookup failed; retrying later",
            extra={"order_id": str(order.id), "error": type(exc).__name__, "detail": str(exc)[:200]},
        )
        await _reschedule(database, order, policy.backoff(order.reconcile_attempts))
        report.count("failed")
        return
    except Exception as exc:
        log_exception(log, "reconciling an order failed", exc, order_id=str(order.id))
        await _reschedule(database, order, policy.backoff(order.reconcile_attempts))
        report.count("failed")
        return
    await _apply(database, policy, order, found, report)


async def _reschedule(database: Database, order: OrderRow, after: dt.timedelta | None) -> None:
    """Look again after ``after`` (None: never again); no state change, no event."""
    try:
        async with database.own_transaction(single_statement=True) as session:
            await OrderRepository(session).reschedule(order, after)
    except Exception as exc:  # the lease runs out and the order is due again
        log_exception(log, "could not reschedule an order", exc, order_id=str(order.id))


async def _apply(
    database: Database,
    policy: OrderPolicy,
    order: OrderRow,
    found: BrokerOrder | None,
    report: ReconcileReport,
) -> None:
    now = dt.datetime.now(dt.UTC)
    age = now - order.created_at
    if order.status in states.UNKNOWN_OUTCOME:
        if found is None:
            if age < policy.grace:
                await _reschedule(database, order, policy.interval)
                report.count("unchanged")
                return
            change = Change(
                status=states.REJECTED,
                reason=states.REJECTED_AFTER_GRACE,
                reject_reason="the broker never received the order",
                detail=f"not found after {policy.grace.total_seconds():g} s",
                next_reconcile_in=policy.backoff(1),  # watched for a late appearance (revival)
            )
            result = "rejected_after_grace"
        else:
            change = _change_from_broker(found, reason="reconciled", policy=policy, order=order)
            result = "settled"
    elif order.status == states.REJECTED:
        if found is None:
            watch_over = age >= REVIVAL_WATCH
            await _reschedule(
                database, order, None if watch_over else policy.backoff(order.reconcile_attempts)
            )
            report.count("unchanged")
            return
        change = _change_from_broker(found, reason="revived", policy=policy, order=order)
        result = "revived"
    else:  # open at the broker: refresh status and fill
        if found is None:
            log.error("the broker no longer knows an open order", extra={"order_id": str(order.id)})
            await _reschedule(database, order, policy.backoff(order.reconcile_attempts))
            report.count("failed")
            return
        if found.status.value == order.status and found.filled_qty == order.filled_qty:
            await _reschedule(database, order, policy.interval)
            report.count("unchanged")
            return
        reason = "fill" if found.filled_qty != order.filled_qty else "broker_update"
        change = _change_from_broker(found, reason=reason, policy=policy, order=order)
        result = "updated"
    async with database.own_transaction() as session:
        updated = await OrderRepository(session).change(order, change)
        if updated is None:
            return  # changed meanwhile (phase (c) or a cancel): that state stands; looked at again later
        if order.status in states.UNKNOWN_OUTCOME:
            # The request that placed it may have died between its phases: finish its key.
            answer = answer_for(updated)
            await complete_in_flight(
                session,
                user_id=order.user_id,
                key=order.idempotency_key,
                claim_token=order.idempotency_claim,
                status_code=answer.status_code,
                content=answer.content,
                headers=answer.headers,
            )
    log_transition(order.status, updated, change.reason)
    if result == "revived":
        ORDERS_REVIVED.inc()
        log.warning(
            "order rejected after the grace period was found at the broker: revived",
            extra={"order_id": str(order.id), "status": updated.status},
        )
    report.count(result)
