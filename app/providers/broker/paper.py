"""The paper broker: ``BrokerProvider`` as a simulator persisted in PostgreSQL (``BROKER_PROVIDER=paper``).

It answers exactly as ``AlpacaBroker`` does — the same values, errors and outcome classes
(``app.providers.broker.base``) — so the orders feature and its reconciler cannot tell them apart, and
every order it reports survives a restart (table ``paper_orders``, ``paper_models.py``).

**Account.** A paper account is whatever the caller passes as ``access_token``: the orders feature passes
the user's id (``str(user.id)``). It is stored as given (1–64 characters, else ``BrokerRejected`` 401, as
Alpaca answers a bad token), so it must not be a secret. Every lookup and cancel is scoped to it: another
account's order is ``None``/``False``, exactly like another Alpaca account's order id (404).

**Prices.** Quotes come straight from the market-data provider (``MarketDataProvider.latest_quote``), not
through the market-data cache: the cache keeps a quote fresh for ``MARKET_DATA_CACHE_SECONDS`` (300 s by
default) and serves copies up to an hour older when the provider fails, and a fill at a price that old is
not a fill "at the current quote". The synthetic provider is in-process (no I/O; about a millisecond of
CPU per quote, its NumPy path); with ``MARKET_DATA_PROVIDER=alpaca`` each order costs one quote call
through the outbound layer (its deadline and breaker), and each matcher pass one per distinct resting
symbol (at most ``max_symbols``). The quote is always fetched before, never inside, a transaction.

**Simulation** (infinite liquidity, no partial fills, no positions or buying power, round the clock):

* A **market** order fills at once, completely, at the quote: a buy at the ask, a sell at the bid.
* A **limit** order that is marketable when placed (buy: ask <= limit; sell: bid >= limit) fills at once at
  that quote — the limit or better, as a marketable limit order takes liquidity. Otherwise it rests
  (status ``new``) until ``match_open_orders`` finds the quote crossed; a resting order then fills at
  **its limit price**: the price path crossed the limit somewhere between two passes, and the limit is
  where a resting order would have been hit (conservative: never better than the limit).
* ``time_in_force``: ``gtc`` rests until filled or canceled. ``day`` rests until the end of the UTC day on
  which it was placed (``expires_at``), then the matcher marks it ``expired`` (there are no market hours,
  the synthetic market runs round the clock; until the next pass after midnight the order still reads
  ``new``, and a cancel in between wins). ``ioc`` and ``fok`` never rest: they fill at once as above or
  are ``canceled`` at once (with infinite liquidity "fill or kill" and "immediate or cancel" coincide).
* **Cancel** of a resting order → ``canceled``, ``True``. A filled, canceled or expired order →
  ``BrokerRejected`` 422 (Alpaca's "not cancelable", code 42210000). An unknown id → ``False``.

**Outcomes.** A placement is one ``INSERT … ON CONFLICT DO NOTHING RETURNING`` committed on its own
(``own_transaction(single_statement=True)``): one round trip, with the fill computed before. A duplicate
``client_order_id`` is never inserted twice — the unique constraint decides, also between processes — and
the existing order is looked up and adopted if it matches the request (symbol, side, qty, type, time in
force, limit price), else ``BrokerRejected`` 422 code 40010001, as in ``alpaca.py``. A quote that cannot be
had raises ``PaperQuoteUnavailable`` and an unknown symbol or a quote without a usable price
``BrokerRejected`` 422 — unless an order already exists under that ``client_order_id``, which is then
adopted as above (a retry must never be told "nothing happened" about an order that exists). A database
failure is classified like a network failure at Alpaca (``_database_failure``): no connection before the
statement was sent → ``PaperBrokerUnavailable`` (an ``UpstreamError``, ``maybe_sent`` False, like
``PaperQuoteUnavailable``); a value the database refuses → ``BrokerRejected`` 422; anything after the
statement was sent (connection lost, statement timeout) → ``BrokerOutcomeUnknown``, since it may have
committed — and likewise any failure while looking up an order that may exist.

**Matching** (``match_open_orders``, called by the orders reconciler every ``RECONCILE_INTERVAL_SECONDS``):
one read lists up to ``max_symbols`` symbols with resting orders (rotating through them across passes);
their quotes are fetched with no transaction open; then ONE statement locks at most ``limit`` due orders,
oldest first, with ``FOR UPDATE SKIP LOCKED`` — crossed ones placed no later than the quotes were taken,
and expired day orders — and fills or expires them, re-checking that each is still resting. Several
processes may run it at once: a row locked by one pass is skipped by the other, and a row one pass has
settled no longer qualifies, so no order is ever filled twice; a concurrent cancel likewise either wins or
finds the order filled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    DateTime,
    Integer,
    Numeric,
    Result,
    String,
    Table,
    bindparam,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError

from app.core.db import Database, rowcount
from app.core.errors import NotFound
from app.core.http import UpstreamError
from app.providers.broker.base import (
    BrokerOrder,
    BrokerOrderStatus,
    BrokerOutcomeUnknown,
    BrokerRejected,
    OrderRequest,
    OrderSide,
    OrderType,
    TimeInForce,
    adopt_existing,
)
from app.providers.broker.paper_models import (
    CANCELED,
    EXPIRED,
    FILLED,
    MAX_ACCOUNT_LENGTH,
    MAX_SYMBOL_LENGTH,
    OPEN,
    PaperOrder,
)
from app.providers.market_data.base import MarketDataProvider, Quote

__all__ = ["PROVIDER", "PaperBroker", "PaperBrokerUnavailable", "PaperQuoteUnavailable"]

log = logging.getLogger("tradedesk.broker")

PROVIDER = "paper"
NOT_CANCELABLE = 42210000  # Alpaca's code for an order that can no longer be canceled
MAX_SYMBOLS_PER_PASS = 100
MAX_INTEGER_DIGITS = 30  # amounts: fewer digits than this before the decimal point ...
MAX_DECIMALS = 30  # ... and at most this many after it
# SQLSTATE classes of a statement the database refused whole: 22 data exception, 23 integrity violation.
_REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23"})
DEFAULT_MATCH_LIMIT = 500


class PaperQuoteUnavailable(UpstreamError):
    """The paper broker could not get a quote to price the order: nothing was placed."""

    slug = "paper-quote-unavailable"
    outcome = "quote_unavailable"
    maybe_sent = False


class PaperBrokerUnavailable(UpstreamError):
    """The paper broker's database had no connection for the call in time: nothing was sent."""

    slug = "paper-broker-unavailable"
    outcome = "unavailable"
    maybe_sent = False


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------- statements (built once)
# Core statements on the Table, not the mapped class: an ORM-enabled INSERT with parameters takes the
# ORM's bulk-insert path, several times the Python cost per order of the plain Core execution.
_TABLE = cast(Table, PaperOrder.__table__)  # declared with __tablename__: a Table
_P = _TABLE.c
_COLUMNS = (
    _P.id,
    _P.client_order_id,
    _P.status,
    _P.symbol,
    _P.qty,
    _P.side,
    _P.type,
    _P.time_in_force,
    _P.limit_price,
    _P.filled_qty,
    _P.filled_avg_price,
    _P.created_at,
    _P.updated_at,
)
_INSERT_FIELDS = (
    "account",
    "client_order_id",
    "symbol",
    "side",
    "type",
    "time_in_force",
    "qty",
    "limit_price",
    "status",
    "filled_qty",
    "filled_avg_price",
    "created_at",
    "updated_at",
    "filled_at",
    "canceled_at",
    "expires_at",
)
_PLACE = (
    pg_insert(_TABLE)
    .values({name: bindparam(name) for name in _INSERT_FIELDS})
    .on_conflict_do_nothing(index_elements=[_P.account, _P.client_order_id])
    .returning(*_COLUMNS)
)
_BY_CLIENT_ORDER_ID = select(*_COLUMNS).where(
    _P.account == bindparam("account"), _P.client_order_id == bindparam("client_order_id")
)
_BY_ID = select(*_COLUMNS).where(_P.account == bindparam("account"), _P.id == bindparam("id"))
_CANCEL = (
    update(_TABLE)
    .where(_P.account == bindparam("b_account"), _P.id == bindparam("b_id"), _P.status == OPEN)
    .values(status=CANCELED, canceled_at=bindparam("b_now"), updated_at=bindparam("b_now"))
)
_OPEN_SYMBOLS = text(
    f"SELECT DISTINCT symbol FROM paper_orders WHERE status = '{OPEN}' AND symbol > :after "  # nosec B608 # the status name is a module constant; values are bound
    "ORDER BY symbol LIMIT :n"
).bindparams(bindparam("after", type_=String()), bindparam("n", type_=Integer()))
# One statement: lock the due orders (at most :limit, oldest first, skipping rows another pass holds),
# then fill the crossed ones at their limit price and expire the day orders past their end.
_MATCH = text(
    f"""
    WITH quote AS (
        SELECT * FROM unnest(CAST(:symbols AS varchar[]), CAST(:bids AS numeric[]), CAST(:asks AS numeric[]))
            AS q(symbol, bid, ask)
    ),
    due AS (
        SELECT o.id, (o.expires_at IS NOT NULL AND o.expires_at <= :now) AS expire
        FROM paper_orders AS o LEFT JOIN quote AS q ON q.symbol = o.symbol
        WHERE o.status = '{OPEN}'
          AND (
            (o.expires_at IS NOT NULL AND o.expires_at <= :now)
            OR (o.created_at <= :quoted_at AND o.side = 'buy' AND q.ask <= o.limit_price)
            OR (o.created_at <= :quoted_at AND o.side = 'sell' AND q.bid >= o.limit_price)
          )
        ORDER BY o.created_at, o.id
        LIMIT :limit
        FOR UPDATE OF o SKIP LOCKED
    )
    UPDATE paper_orders AS p SET
        status = CASE WHEN due.expire THEN '{EXPIRED}' ELSE '{FILLED}' END,
        filled_qty = CASE WHEN due.expire THEN p.filled_qty ELSE p.qty END,
        filled_avg_price = CASE WHEN due.expire THEN p.filled_avg_price ELSE p.limit_price END,
        filled_at = CASE WHEN due.expire THEN p.filled_at ELSE :now END,
        updated_at = :now
    FROM due
    WHERE p.id = due.id AND p.status = '{OPEN}'
    """  # nosec B608 # SQL from module constants; every value is a bound parameter
).bindparams(
    bindparam("symbols", type_=ARRAY(String())),
    bindparam("bids", type_=ARRAY(Numeric())),
    bindparam("asks", type_=ARRAY(Numeric())),
    bindparam("now", type_=DateTime(timezone=True)),
    bindparam("quoted_at", type_=DateTime(timezone=True)),
    bindparam("limit", type_=Integer()),
)


class PaperBroker:
    """``BrokerProvider`` simulated in PostgreSQL; one instance for all accounts (see the module docstring).

    ``clock`` gives the broker's "now" (aware UTC) for its timestamps and day-order expiry; ``max_symbols``
    bounds the quotes one matcher pass fetches."""

    name = "paper"

    def __init__(
        self,
        database: Database,
        quotes: MarketDataProvider,
        *,
        clock: Callable[[], dt.datetime] = _utc_now,
        max_symbols: int = MAX_SYMBOLS_PER_PASS,
    ) -> None:
        if max_symbols < 1:
            raise ValueError("max_symbols must be at least 1")
        self.database = database
        self.quotes = quotes
        self.clock = clock
        self.max_symbols = max_symbols
        self._symbol_cursor = ""  # the matcher's rotation through resting symbols (per process)

    # ------------------------------------------------------------------ BrokerProvider
    async def submit_order(self, *, access_token: str, order: OrderRequest) -> BrokerOrder:
        """Place ``order`` (filled, resting or canceled at once); a duplicate client_order_id adopts."""
        account = _account(access_token)
        _check_storable(order)
        try:
            quote = await self._quote(order.symbol)
            values = _placement(order, quote, self.clock())
        except (BrokerRejected, PaperQuoteUnavailable):
            # Nothing placed now; an earlier attempt may have placed it. Unable to look: unknown.
            existing = await self._find(
                _BY_CLIENT_ORDER_ID, may_exist=True, account=account, client_order_id=order.client_order_id
            )
            if existing is None:
                raise  # nothing was placed, now or before
            return adopt_existing(existing, order, provider=PROVIDER)
        values.update(account=account, client_order_id=order.client_order_id)
        row = (await self._run(_PLACE, values, may_exist=False)).first()
        if row is not None:
            return _to_order(row)
        # The unique constraint refused a second order: the one placed first under this id decides.
        existing = await self._find(
            _BY_CLIENT_ORDER_ID, may_exist=True, account=account, client_order_id=order.client_order_id
        )
        if existing is None:  # orders are never deleted: only a broken database could get here
            raise BrokerOutcomeUnknown(PROVIDER, "duplicate client_order_id the broker cannot find")
        return adopt_existing(existing, order, provider=PROVIDER)

    async def get_order_by_client_order_id(
        self, *, access_token: str, client_order_id: str
    ) -> BrokerOrder | None:
        """The account's order sent under ``client_order_id``, or None."""
        return await self._find(
            _BY_CLIENT_ORDER_ID, account=_account(access_token), client_order_id=client_order_id
        )

    async def get_order(self, *, access_token: str, broker_order_id: str) -> BrokerOrder | None:
        """The account's order with this id, or None (also for an id that is not a paper order id)."""
        account = _account(access_token)
        order_id = _order_id(broker_order_id)
        if order_id is None:
            return None
        return await self._find(_BY_ID, account=account, id=order_id)

    async def cancel_order(self, *, access_token: str, broker_order_id: str) -> bool:
        """Cancel a resting order: True; False for no such order; BrokerRejected 422 when it has ended."""
        account = _account(access_token)
        order_id = _order_id(broker_order_id)
        if order_id is None:
            return False
        for _ in range(3):
            params = {"b_account": account, "b_id": order_id, "b_now": self.clock()}
            if rowcount(await self._run(_CANCEL, params, may_exist=False)):
                return True
            found = await self._find(_BY_ID, account=account, id=order_id)
            if found is None:
                return False
            if found.status.is_terminal:
                raise BrokerRejected(
                    f'order is already in "{found.raw_status}" state', 422, code=NOT_CANCELABLE
                )
            # Not reachable while the UPDATE re-checks the row it waited for; try once more regardless.
        raise BrokerOutcomeUnknown(PROVIDER, "the order neither canceled nor ended")

    # ------------------------------------------------------------------ the matcher
    async def match_open_orders(self, limit: int = DEFAULT_MATCH_LIMIT) -> int:
        """Fill resting limit orders whose quote has crossed and expire ended day orders: at most ``limit``
        orders per call, safe to run in several processes at once. Returns how many orders it settled."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        symbols = await self._resting_symbols()
        if not symbols:
            return 0
        quoted_at = self.clock()
        quotes = await asyncio.gather(*(self._match_quote(symbol) for symbol in symbols))
        priced = [(symbol, q) for symbol, q in zip(symbols, quotes, strict=True) if q is not None]
        params = {
            "symbols": [symbol for symbol, _ in priced],
            # A side without a usable price is NULL, which never compares true: it matches nothing.
            "bids": [q.bid if _usable(q.bid) else None for _, q in priced],
            "asks": [q.ask if _usable(q.ask) else None for _, q in priced],
            "now": self.clock(),
            "quoted_at": quoted_at,
            "limit": limit,
        }
        async with self.database.own_transaction(single_statement=True) as session:
            settled = rowcount(await session.execute(_MATCH, params))
        if settled:
            log.debug("paper orders settled by the matcher", extra={"provider": PROVIDER, "count": settled})
        return settled

    async def _resting_symbols(self) -> list[str]:
        """Up to ``max_symbols`` symbols with resting orders, continuing where the last pass stopped."""
        for after in dict.fromkeys((self._symbol_cursor, "")):
            async with self.database.own_transaction(single_statement=True) as session:
                result = await session.execute(_OPEN_SYMBOLS, {"after": after, "n": self.max_symbols})
                symbols: list[str] = list(result.scalars())
            if symbols:
                self._symbol_cursor = symbols[-1] if len(symbols) == self.max_symbols else ""
                return symbols
        self._symbol_cursor = ""
        return []

    async def _match_quote(self, symbol: str) -> Quote | None:
        try:
            quote = await self._quote(symbol)
        except (PaperQuoteUnavailable, BrokerRejected) as exc:
            log.warning(
                "paper matcher skipped a symbol without a quote",
                extra={"provider": PROVIDER, "symbol": symbol, "reason": str(exc)[:200]},
            )
            return None
        return quote

    # ------------------------------------------------------------------ plumbing
    async def _quote(self, symbol: str) -> Quote:
        try:
            return await self.quotes.latest_quote(symbol)
        except NotFound:
            raise BrokerRejected(f"asset {symbol!r} not found", 422) from None
        except UpstreamError as exc:
            raise PaperQuoteUnavailable(
                PROVIDER,
                f"No quote for {symbol} to price the order; retry shortly.",
                retry_after=exc.retry_after,
            ) from exc

    async def _find(self, stmt: Any, *, may_exist: bool = False, **params: Any) -> BrokerOrder | None:
        row = (await self._run(stmt, params, may_exist=may_exist)).first()
        return None if row is None else _to_order(row)

    async def _run(self, stmt: Any, params: dict[str, Any], *, may_exist: bool) -> Result[Any]:
        """One statement, committed on its own; a database failure classified as the Protocol's outcomes
        (``_database_failure``). ``may_exist``: an order this call is about may exist already."""
        sent = False
        try:
            async with self.database.own_transaction(single_statement=True) as session:
                await session.connection()  # the pool checkout (and its pre-ping): nothing of ours sent yet
                sent = True
                result: Result[Any] = await session.execute(stmt, params)
            return result  # buffered: usable after the session closed
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _database_failure(exc, sent=sent, may_exist=may_exist) from exc


# ---------------------------------------------------------------------- pure helpers
def _database_failure(exc: Exception, *, sent: bool, may_exist: bool) -> Exception:
    """What a failed statement means to the caller, in the Protocol's terms. ``may_exist``: an order the
    call is about may exist already, so "nothing happened" cannot be said whatever failed.

    * No connection (pool timeout, database unreachable) before the statement was sent →
      ``PaperBrokerUnavailable`` (``maybe_sent`` False).
    * The database refused a value (integrity or data error): the statement failed whole →
      ``BrokerRejected`` 422.
    * Anything else once the statement was sent (connection lost, statement timeout, ...): it may have
      committed → ``BrokerOutcomeUnknown``, for the reconciler to look the order up by ``client_order_id``.
    """
    if not may_exist:
        if not sent:
            return PaperBrokerUnavailable(
                PROVIDER, "The paper broker's database is unavailable; retry shortly."
            )
        sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")
        if sqlstate[:2] in _REFUSED_SQLSTATE_CLASSES:
            return BrokerRejected("the paper broker cannot store these values", 422)
    log.warning(
        "paper broker database failure, outcome unknown",
        extra={"provider": PROVIDER, "error": type(exc).__name__},
    )
    return BrokerOutcomeUnknown(PROVIDER, f"database failure ({type(exc).__name__})")


def _check_storable(order: OrderRequest) -> None:
    """Refuse what the table cannot hold faithfully. Amounts are bounded well inside PostgreSQL's numeric
    range: asyncpg encodes a Decimal beyond it (``1E+140000``) as 0 instead of failing, so such a value
    must never reach the INSERT."""
    if len(order.symbol) > MAX_SYMBOL_LENGTH:
        raise BrokerRejected(f"invalid symbol {order.symbol[:20]!r}", 422)
    for field, amount in (("qty", order.qty), ("limit_price", order.limit_price)):
        if amount is None:
            continue
        exponent = amount.as_tuple().exponent
        if amount.adjusted() >= MAX_INTEGER_DIGITS or (
            isinstance(exponent, int) and -exponent > MAX_DECIMALS
        ):
            raise BrokerRejected(
                f"{field} must have fewer than {MAX_INTEGER_DIGITS} digits before the decimal point and at "
                f"most {MAX_DECIMALS} after it",
                422,
            )


def _account(access_token: str) -> str:
    if not isinstance(access_token, str) or not 0 < len(access_token) <= MAX_ACCOUNT_LENGTH:
        raise BrokerRejected(
            f"the paper account (access token) must be 1-{MAX_ACCOUNT_LENGTH} characters", 401
        )
    return access_token


def _order_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        return None


def _usable(price: Decimal | None) -> bool:
    return isinstance(price, Decimal) and price.is_finite() and price > 0


def _end_of_utc_day(now: dt.datetime) -> dt.datetime:
    day = now.astimezone(dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time(0), dt.UTC)


def _placement(order: OrderRequest, quote: Quote, now: dt.datetime) -> dict[str, Any]:
    """The row for ``order`` as placed at ``quote`` (the simulation rules of the module docstring)."""
    price = quote.ask if order.side is OrderSide.BUY else quote.bid
    if not _usable(price):
        raise BrokerRejected(
            f"no usable {'ask' if order.side is OrderSide.BUY else 'bid'} for {order.symbol}", 422
        )
    if order.type is OrderType.MARKET:
        marketable = True
    else:
        if order.limit_price is None:  # OrderRequest guarantees it for limit orders
            raise BrokerRejected("a limit order needs a limit price", 422)
        marketable = price <= order.limit_price if order.side is OrderSide.BUY else price >= order.limit_price
    values: dict[str, Any] = {
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "time_in_force": order.time_in_force.value,
        "qty": order.qty,
        "limit_price": order.limit_price,
        "status": OPEN,
        "filled_qty": Decimal(0),
        "filled_avg_price": None,
        "created_at": now,
        "updated_at": now,
        "filled_at": None,
        "canceled_at": None,
        "expires_at": _end_of_utc_day(now) if order.time_in_force is TimeInForce.DAY else None,
    }
    if marketable:
        values.update(status=FILLED, filled_qty=order.qty, filled_avg_price=price, filled_at=now)
    elif order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
        values.update(status=CANCELED, canceled_at=now)
    return values


def _to_order(row: Any) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=str(row.id),
        client_order_id=row.client_order_id,
        status=BrokerOrderStatus(row.status),
        raw_status=row.status,
        symbol=row.symbol,
        qty=row.qty,
        side=OrderSide(row.side),
        type=OrderType(row.type),
        time_in_force=TimeInForce(row.time_in_force),
        limit_price=row.limit_price,
        filled_qty=row.filled_qty,
        filled_avg_price=row.filled_avg_price,
        created_at=row.created_at,
        submitted_at=row.created_at,
        updated_at=row.updated_at,
    )
