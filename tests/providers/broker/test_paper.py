"""PaperBroker on a real PostgreSQL, priced by a SyntheticProvider whose clock the test owns (deterministic
quotes; moving the clock moves the market, no sleeps): fills at the quote, resting limit orders and the
matcher, duplicates under concurrency, cancel, lookups, isolation per account, Decimal precision."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event, text

from app.core.db import Database, create_engine
from app.core.errors import NotFound
from app.core.http import Outbound, UpstreamError, UpstreamTimeout
from app.providers.broker import (
    BrokerOrderStatus,
    BrokerOutcomeUnknown,
    BrokerProvider,
    BrokerRejected,
    OrderRequest,
    OrderSide,
    OrderType,
    PaperBroker,
    TimeInForce,
    build_broker,
)
from app.providers.broker.paper import PaperBrokerUnavailable, PaperQuoteUnavailable
from app.providers.market_data import MarketData
from app.providers.market_data.base import Quote
from app.providers.market_data.cache import MarketDataCache
from app.providers.market_data.synthetic import SyntheticProvider
from tests.support.settings import make_settings

FROZEN = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SYMBOL = "AAPL"
TICK = Decimal("0.01")


class Clock:
    """The market's "now" (epoch seconds), moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WallClock:
    """The broker's "now" (aware UTC), moved by the test."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def new_database(url: str) -> Database:
    return Database(create_engine(make_settings(url), pool_size=10, max_overflow=15))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = new_database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
def market_clock() -> Clock:
    return Clock(FROZEN)


@pytest.fixture
def market(market_clock: Clock) -> MarketData:
    return MarketData(
        provider=SyntheticProvider(clock=market_clock),
        cache=MarketDataCache(
            namespace="test:paper", provider="synthetic", fresh_seconds=60, fetch_timeout=1
        ),
    )


@pytest.fixture
async def broker(database_url: str, db: Database, market: MarketData) -> AsyncIterator[PaperBroker]:
    """The paper broker exactly as the app builds it (build_broker for BROKER_PROVIDER=paper)."""
    settings = make_settings(database_url, broker_provider="paper")
    outbound = Outbound(settings)
    built = build_broker(settings, outbound, database=db, market_data=market)
    assert isinstance(built, PaperBroker)
    yield built
    await outbound.aclose()


def account() -> str:
    return str(uuid.uuid4())  # what the orders feature passes: the user's id


def request(**overrides: Any) -> OrderRequest:
    values: dict[str, Any] = {
        "symbol": SYMBOL,
        "qty": Decimal("10"),
        "side": OrderSide.BUY,
        "type": OrderType.MARKET,
        "time_in_force": TimeInForce.DAY,
        "client_order_id": f"td-{uuid.uuid4().hex}",
    }
    values.update(overrides)
    return OrderRequest(**values)


async def quote(market: MarketData, symbol: str = SYMBOL) -> Quote:
    return await market.provider.latest_quote(symbol)


async def move_until(
    clock: Clock, market: MarketData, done: Callable[[Quote], bool], *, symbol: str = SYMBOL
) -> Quote:
    """Advance the market clock a minute at a time (at most 30 days) until ``done(quote)``."""
    for _ in range(30 * 24 * 60):
        clock.now += 60
        q = await quote(market, symbol)
        if done(q):
            return q
    raise AssertionError("the synthetic market never got there")


async def rows(db: Database, where: str = "TRUE", **params: Any) -> list[Any]:
    async with db.own_transaction() as session:
        return list((await session.execute(text(f"SELECT * FROM paper_orders WHERE {where}"), params)).all())


# --------------------------------------------------------------------------- construction
async def test_build_broker_gives_the_paper_broker_and_needs_its_database_and_market_data(
    database_url: str, db: Database, market: MarketData, broker: PaperBroker
) -> None:
    assert isinstance(broker, BrokerProvider) and broker.name == "paper"
    assert broker.database is db and broker.quotes is market.provider
    settings = make_settings(database_url, broker_provider="paper")
    outbound = Outbound(settings)
    with pytest.raises(ValueError, match="database"):
        build_broker(settings, outbound)
    assert outbound.clients == {}  # no outbound client for the paper broker


# --------------------------------------------------------------------------- market orders
@pytest.mark.parametrize("side", [OrderSide.BUY, OrderSide.SELL])
async def test_a_market_order_fills_at_once_at_the_ask_or_the_bid(
    broker: PaperBroker, market: MarketData, db: Database, side: OrderSide
) -> None:
    q = await quote(market)
    assert q.bid < q.ask  # so buy-at-ask and sell-at-bid are told apart
    who = account()
    placed = await broker.submit_order(access_token=who, order=request(side=side, qty=Decimal("3")))
    expected = q.ask if side is OrderSide.BUY else q.bid
    assert placed.status is BrokerOrderStatus.FILLED and placed.raw_status == "filled"
    assert placed.filled_qty == Decimal("3") and placed.filled_avg_price == expected
    assert isinstance(placed.filled_avg_price, Decimal)
    assert placed.side is side and placed.type is OrderType.MARKET and placed.limit_price is None
    assert placed.created_at.tzinfo is not None and placed.submitted_at == placed.created_at
    # Persisted: a lookup (a fresh read from the table) says the same.
    assert await broker.get_order(access_token=who, broker_order_id=placed.broker_order_id) == placed
    (row,) = await rows(db)
    assert row.status == "filled" and row.filled_avg_price == expected and row.account == who


async def test_a_market_order_is_one_sql_statement(broker: PaperBroker, db: Database) -> None:
    """The benchmark's budget: the fill is computed before, so placing is one INSERT … RETURNING."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        placed = await broker.submit_order(access_token=account(), order=request())
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
    assert placed.status is BrokerOrderStatus.FILLED
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("INSERT"), statements


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTC])
async def test_market_orders_fill_whatever_their_time_in_force(
    broker: PaperBroker, market: MarketData, tif: TimeInForce
) -> None:
    placed = await broker.submit_order(access_token=account(), order=request(time_in_force=tif))
    assert placed.status is BrokerOrderStatus.FILLED and placed.filled_avg_price == (await quote(market)).ask
    assert placed.time_in_force is tif


# --------------------------------------------------------------------------- limit orders
async def test_a_marketable_limit_order_fills_at_once_at_the_quote_not_worse(
    broker: PaperBroker, market: MarketData
) -> None:
    q = await quote(market)
    buy = await broker.submit_order(
        access_token=account(),
        order=request(type=OrderType.LIMIT, limit_price=q.ask + Decimal("1.00")),
    )
    sell = await broker.submit_order(
        access_token=account(),
        order=request(type=OrderType.LIMIT, side=OrderSide.SELL, limit_price=q.bid - Decimal("1.00")),
    )
    assert buy.status is BrokerOrderStatus.FILLED and buy.filled_avg_price == q.ask  # better than its limit
    assert sell.status is BrokerOrderStatus.FILLED and sell.filled_avg_price == q.bid


@pytest.mark.parametrize("side", [OrderSide.BUY, OrderSide.SELL])
async def test_a_limit_order_rests_then_fills_at_its_limit_when_the_quote_crosses(
    broker: PaperBroker, market: MarketData, market_clock: Clock, side: OrderSide
) -> None:
    q0 = await quote(market)
    buy = side is OrderSide.BUY
    limit = q0.bid - 3 * TICK if buy else q0.ask + 3 * TICK  # not marketable now
    who = account()
    placed = await broker.submit_order(
        access_token=who, order=request(side=side, type=OrderType.LIMIT, limit_price=limit)
    )
    assert placed.status is BrokerOrderStatus.NEW and placed.filled_qty == 0
    assert placed.filled_avg_price is None and placed.limit_price == limit

    assert await broker.match_open_orders(limit=100) == 0  # the quote has not crossed: it keeps resting
    assert (await broker.get_order(access_token=who, broker_order_id=placed.broker_order_id)) == placed

    # Move the market until the quote is strictly through the limit, so "at the limit" is visible.
    crossed = await move_until(
        market_clock, market, (lambda q: q.ask < limit) if buy else (lambda q: q.bid > limit)
    )
    assert await broker.match_open_orders(limit=100) == 1
    filled = await broker.get_order(access_token=who, broker_order_id=placed.broker_order_id)
    assert filled is not None and filled.status is BrokerOrderStatus.FILLED
    assert filled.filled_qty == placed.qty and filled.filled_avg_price == limit
    assert filled.filled_avg_price != (crossed.ask if buy else crossed.bid)
    assert filled.updated_at is not None and filled.updated_at >= placed.created_at
    assert await broker.match_open_orders(limit=100) == 0  # settled once


@pytest.mark.parametrize("tif", [TimeInForce.IOC, TimeInForce.FOK])
async def test_ioc_and_fok_limit_orders_that_do_not_cross_are_canceled_at_once(
    broker: PaperBroker, market: MarketData, db: Database, tif: TimeInForce
) -> None:
    q = await quote(market)
    placed = await broker.submit_order(
        access_token=account(),
        order=request(type=OrderType.LIMIT, limit_price=q.bid - TICK, time_in_force=tif),
    )
    assert placed.status is BrokerOrderStatus.CANCELED and placed.filled_qty == 0
    assert await broker.match_open_orders(limit=10) == 0  # nothing rests
    (row,) = await rows(db)
    assert row.canceled_at is not None


async def test_day_orders_expire_at_the_end_of_the_utc_day_and_gtc_orders_keep_resting(
    db: Database, market: MarketData
) -> None:
    clock = WallClock(dt.datetime(2026, 3, 16, 23, 59, 0, tzinfo=dt.UTC))
    broker = PaperBroker(db, market.provider, clock=clock)
    q = await quote(market)
    who = account()
    orders = {
        tif: await broker.submit_order(
            access_token=who,
            order=request(type=OrderType.LIMIT, limit_price=q.bid - 5 * TICK, time_in_force=tif),
        )
        for tif in (TimeInForce.DAY, TimeInForce.GTC)
    }
    assert all(o.status is BrokerOrderStatus.NEW for o in orders.values())
    clock.now = dt.datetime(2026, 3, 16, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert await broker.match_open_orders(limit=10) == 0
    clock.now = dt.datetime(2026, 3, 17, 0, 0, 0, tzinfo=dt.UTC)
    assert await broker.match_open_orders(limit=10) == 1
    day = await broker.get_order(access_token=who, broker_order_id=orders[TimeInForce.DAY].broker_order_id)
    gtc = await broker.get_order(access_token=who, broker_order_id=orders[TimeInForce.GTC].broker_order_id)
    assert day is not None and day.status is BrokerOrderStatus.EXPIRED and day.filled_qty == 0
    assert day.updated_at == clock.now
    assert gtc is not None and gtc.status is BrokerOrderStatus.NEW
    with pytest.raises(BrokerRejected) as rejected:
        await broker.cancel_order(access_token=who, broker_order_id=day.broker_order_id)
    assert rejected.value.status_code == 422


async def test_the_matcher_is_bounded_per_call_and_fills_oldest_first(
    broker: PaperBroker, market: MarketData, market_clock: Clock
) -> None:
    q0 = await quote(market)
    limit = q0.bid - 2 * TICK
    who = account()
    placed = [
        await broker.submit_order(access_token=who, order=request(type=OrderType.LIMIT, limit_price=limit))
        for _ in range(5)
    ]
    await move_until(market_clock, market, lambda q: q.ask <= limit)
    assert [await broker.match_open_orders(limit=2) for _ in range(4)] == [2, 2, 1, 0]
    for order in placed:
        found = await broker.get_order(access_token=who, broker_order_id=order.broker_order_id)
        assert found is not None and found.status is BrokerOrderStatus.FILLED


async def test_the_matcher_fills_the_oldest_first(
    broker: PaperBroker, market: MarketData, market_clock: Clock
) -> None:
    q0 = await quote(market)
    limit = q0.bid - 2 * TICK
    who = account()
    first = await broker.submit_order(
        access_token=who, order=request(type=OrderType.LIMIT, limit_price=limit)
    )
    second = await broker.submit_order(
        access_token=who, order=request(type=OrderType.LIMIT, limit_price=limit)
    )
    await move_until(market_clock, market, lambda q: q.ask <= limit)
    assert await broker.match_open_orders(limit=1) == 1
    one = await broker.get_order(access_token=who, broker_order_id=first.broker_order_id)
    two = await broker.get_order(access_token=who, broker_order_id=second.broker_order_id)
    assert one is not None and one.status is BrokerOrderStatus.FILLED
    assert two is not None and two.status is BrokerOrderStatus.NEW


async def test_the_matcher_rotates_through_symbols_beyond_its_per_pass_bound(
    db: Database, market: MarketData
) -> None:
    """Two symbols a pass: resting orders on the first two (alphabetically) must not starve the third."""
    broker = PaperBroker(db, market.provider, max_symbols=2)
    who = account()
    for symbol in ("AAA", "BBB", "CCC"):
        limit = (await quote(market, symbol)).ask + 10 * TICK  # a sell limit above the market: rests
        await broker.submit_order(
            access_token=who,
            order=request(symbol=symbol, side=OrderSide.SELL, type=OrderType.LIMIT, limit_price=limit),
        )
    # Make CCC's order marketable at the current quote (a test shortcut for "its market moved").
    async with db.own_transaction() as session:
        await session.execute(text("UPDATE paper_orders SET limit_price = 0.0001 WHERE symbol = 'CCC'"))
    settled = [await broker.match_open_orders(limit=10) for _ in range(3)]
    assert settled == [0, 1, 0]  # AAA and BBB first (nothing due), then CCC, then AAA and BBB again
    (ccc,) = await rows(db, "symbol = 'CCC'")
    assert ccc.status == "filled"


# --------------------------------------------------------------------------- concurrency
async def test_twenty_concurrent_submits_with_one_client_order_id_make_exactly_one_order(
    broker: PaperBroker, db: Database
) -> None:
    who = account()
    order = request()
    results = await asyncio.gather(*(broker.submit_order(access_token=who, order=order) for _ in range(20)))
    assert len({r.broker_order_id for r in results}) == 1
    assert all(r == results[0] for r in results)
    assert len(await rows(db, "client_order_id = :c", c=order.client_order_id)) == 1


async def test_a_resubmit_adopts_the_order_and_another_order_under_the_id_is_rejected(
    broker: PaperBroker, market: MarketData, market_clock: Clock, db: Database
) -> None:
    who = account()
    order = request()
    first = await broker.submit_order(access_token=who, order=order)
    market_clock.now += 3600  # another price now: the retry must not refill
    assert await broker.submit_order(access_token=who, order=order) == first
    with pytest.raises(BrokerRejected) as rejected:
        await broker.submit_order(
            access_token=who,
            order=request(client_order_id=order.client_order_id, qty=Decimal("11")),
        )
    assert rejected.value.code == 40010001 and rejected.value.status_code == 422
    assert len(await rows(db)) == 1


async def test_two_concurrent_matchers_never_fill_one_order_twice(
    database_url: str, broker: PaperBroker, market: MarketData, market_clock: Clock, db: Database
) -> None:
    """Two processes' passes over the same due orders, made to overlap for sure: a row trigger slows every
    UPDATE of the table (20 ms a row), so the second pass runs while the first still holds its rows.
    Each order must be settled by exactly one of them (the counts add up to the orders, not more)."""
    q0 = await quote(market)
    limit = q0.bid - 2 * TICK
    who = account()
    count = 20
    await asyncio.gather(
        *(
            broker.submit_order(access_token=who, order=request(type=OrderType.LIMIT, limit_price=limit))
            for _ in range(count)
        )
    )
    await move_until(market_clock, market, lambda q: q.ask <= limit)
    other_db = new_database(database_url)  # a second process: its own pool and its own broker
    try:
        other = PaperBroker(other_db, market.provider)
        async with db.own_transaction() as session:
            await session.execute(
                text(
                    "CREATE FUNCTION paper_orders_slow() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER paper_orders_slow BEFORE UPDATE ON paper_orders "
                    "FOR EACH ROW EXECUTE FUNCTION paper_orders_slow()"
                )
            )
        settled = await asyncio.gather(
            broker.match_open_orders(limit=1000), other.match_open_orders(limit=1000)
        )
        assert sum(settled) == count, settled
        assert [r.status for r in await rows(db)] == ["filled"] * count
        assert await broker.match_open_orders(limit=1000) == 0
    finally:
        async with db.own_transaction() as session:
            await session.execute(text("DROP TRIGGER IF EXISTS paper_orders_slow ON paper_orders"))
            await session.execute(text("DROP FUNCTION IF EXISTS paper_orders_slow()"))
        await other_db.dispose()


# --------------------------------------------------------------------------- cancel
async def test_cancel_a_resting_order_then_an_ended_one_then_an_unknown_one(
    broker: PaperBroker, market: MarketData, db: Database
) -> None:
    who = account()
    q = await quote(market)
    resting = await broker.submit_order(
        access_token=who, order=request(type=OrderType.LIMIT, limit_price=q.bid - TICK)
    )
    assert await broker.cancel_order(access_token=who, broker_order_id=resting.broker_order_id) is True
    canceled = await broker.get_order(access_token=who, broker_order_id=resting.broker_order_id)
    assert canceled is not None and canceled.status is BrokerOrderStatus.CANCELED
    (row,) = await rows(db)
    assert row.canceled_at is not None

    with pytest.raises(BrokerRejected) as twice:
        await broker.cancel_order(access_token=who, broker_order_id=resting.broker_order_id)
    assert (
        twice.value.status_code == 422 and twice.value.code == 42210000 and "canceled" in twice.value.reason
    )

    filled = await broker.submit_order(access_token=who, order=request())
    with pytest.raises(BrokerRejected) as done:
        await broker.cancel_order(access_token=who, broker_order_id=filled.broker_order_id)
    assert done.value.status_code == 422 and "filled" in done.value.reason
    still = await broker.get_order(access_token=who, broker_order_id=filled.broker_order_id)
    assert still is not None and still.status is BrokerOrderStatus.FILLED

    assert await broker.cancel_order(access_token=who, broker_order_id=str(uuid.uuid4())) is False
    assert await broker.cancel_order(access_token=who, broker_order_id="not-an-order-id") is False


# --------------------------------------------------------------------------- lookups and accounts
async def test_lookups_by_client_order_id_and_by_id(broker: PaperBroker) -> None:
    who = account()
    order = request()
    placed = await broker.submit_order(access_token=who, order=order)
    by_client = await broker.get_order_by_client_order_id(
        access_token=who, client_order_id=order.client_order_id
    )
    by_id = await broker.get_order(access_token=who, broker_order_id=placed.broker_order_id)
    assert by_client == placed == by_id and placed.client_order_id == order.client_order_id
    assert await broker.get_order_by_client_order_id(access_token=who, client_order_id="td-unknown") is None
    assert await broker.get_order(access_token=who, broker_order_id=str(uuid.uuid4())) is None
    assert await broker.get_order(access_token=who, broker_order_id="../v2/orders") is None


async def test_accounts_are_isolated(broker: PaperBroker, market: MarketData, db: Database) -> None:
    alice, bob = account(), account()
    q = await quote(market)
    order = request(type=OrderType.LIMIT, limit_price=q.bid - TICK)
    mine = await broker.submit_order(access_token=alice, order=order)
    # Bob sees nothing of Alice's order, by client_order_id or by id, and cannot cancel it.
    assert (
        await broker.get_order_by_client_order_id(access_token=bob, client_order_id=order.client_order_id)
        is None
    )
    assert await broker.get_order(access_token=bob, broker_order_id=mine.broker_order_id) is None
    assert await broker.cancel_order(access_token=bob, broker_order_id=mine.broker_order_id) is False
    still = await broker.get_order(access_token=alice, broker_order_id=mine.broker_order_id)
    assert still is not None and still.status is BrokerOrderStatus.NEW
    # The same client_order_id in Bob's account is Bob's own order, not an adoption of Alice's.
    theirs = await broker.submit_order(access_token=bob, order=request(client_order_id=order.client_order_id))
    assert theirs.broker_order_id != mine.broker_order_id and theirs.type is OrderType.MARKET
    assert len(await rows(db, "client_order_id = :c", c=order.client_order_id)) == 2


@pytest.mark.parametrize("token", ["", "x" * 65])
async def test_an_unusable_account_is_refused_like_a_bad_token(broker: PaperBroker, token: str) -> None:
    with pytest.raises(BrokerRejected) as refused:
        await broker.submit_order(access_token=token, order=request())
    assert refused.value.status_code == 401
    with pytest.raises(BrokerRejected):
        await broker.get_order_by_client_order_id(access_token=token, client_order_id="td-x")


# --------------------------------------------------------------------------- precision
async def test_decimal_amounts_come_back_exactly_as_sent(broker: PaperBroker, market: MarketData) -> None:
    who = account()
    q = await quote(market)
    qty = Decimal("0.123456789")
    limit = (q.ask * 2).quantize(Decimal("0.0001")) + Decimal("0.0001")  # four decimals, far above
    resting = await broker.submit_order(
        access_token=who,
        order=request(side=OrderSide.SELL, type=OrderType.LIMIT, qty=qty, limit_price=limit),
    )
    found = await broker.get_order(access_token=who, broker_order_id=resting.broker_order_id)
    assert found is not None
    assert str(found.qty) == "0.123456789" and str(found.limit_price) == str(limit)
    assert isinstance(found.qty, Decimal) and isinstance(found.limit_price, Decimal)
    filled = await broker.submit_order(access_token=who, order=request(qty=Decimal("10.50")))
    again = await broker.get_order(access_token=who, broker_order_id=filled.broker_order_id)
    assert again is not None and str(again.filled_qty) == "10.50" and str(again.qty) == "10.50"
    assert str(again.filled_avg_price) == str(q.ask)


# --------------------------------------------------------------------------- when there is no price
class FailingQuotes:
    name = "failing"

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def latest_quote(self, symbol: str) -> Quote:
        raise self.error


async def test_no_quote_means_nothing_placed_unless_the_order_already_exists(
    db: Database, broker: PaperBroker
) -> None:
    failing = PaperBroker(db, FailingQuotes(UpstreamTimeout("alpaca-data")))  # type: ignore[arg-type]
    who = account()
    order = request()
    with pytest.raises(PaperQuoteUnavailable) as unavailable:
        await failing.submit_order(access_token=who, order=order)
    assert isinstance(unavailable.value, UpstreamError) and unavailable.value.maybe_sent is False
    assert await rows(db) == []
    # The order placed meanwhile (a first attempt that got through) is adopted, never reported unsent.
    placed = await broker.submit_order(access_token=who, order=order)
    assert await failing.submit_order(access_token=who, order=order) == placed


async def test_an_unknown_symbol_is_rejected_and_nothing_placed(db: Database) -> None:
    broker = PaperBroker(db, FailingQuotes(NotFound("no such symbol")))  # type: ignore[arg-type]
    with pytest.raises(BrokerRejected) as rejected:
        await broker.submit_order(access_token=account(), order=request(symbol="NOPE"))
    assert rejected.value.status_code == 422
    assert await rows(db) == []


class ScriptedQuotes:
    """Quotes the test sets by hand; ``on_quote`` runs once, inside the next quote fetch, after the quote
    it answers was taken (to act "while the matcher is fetching")."""

    name = "scripted"

    def __init__(self, bid: str, ask: str) -> None:
        self.bid, self.ask = Decimal(bid), Decimal(ask)
        self.on_quote: Callable[[], Any] | None = None

    async def latest_quote(self, symbol: str) -> Quote:
        taken = Quote(symbol, self.bid, self.ask, None, dt.datetime.now(dt.UTC))
        hook, self.on_quote = self.on_quote, None
        if hook is not None:
            await hook()
        return taken


async def test_an_order_placed_after_the_matcher_took_its_quotes_is_not_matched_against_them(
    db: Database,
) -> None:
    quotes = ScriptedQuotes("99.98", "100.00")
    clock = WallClock(dt.datetime(2026, 3, 16, 12, 0, tzinfo=dt.UTC))
    broker = PaperBroker(db, quotes, clock=clock)  # type: ignore[arg-type]
    who = account()
    await broker.submit_order(
        access_token=who, order=request(type=OrderType.LIMIT, limit_price=Decimal("50"))
    )
    late: list[Any] = []

    async def place_meanwhile() -> None:  # the market is back at 100 when this order is placed
        clock.now += dt.timedelta(seconds=1)
        quotes.bid, quotes.ask = Decimal("99.98"), Decimal("100.00")
        late.append(
            await broker.submit_order(
                access_token=who, order=request(type=OrderType.LIMIT, limit_price=Decimal("95"))
            )
        )

    quotes.bid, quotes.ask = Decimal("89.98"), Decimal("90.00")  # what the matcher sees
    quotes.on_quote = place_meanwhile
    assert await broker.match_open_orders(limit=10) == 0  # 90 <= 95, but that quote predates the order
    assert late[0].status is BrokerOrderStatus.NEW
    quotes.bid, quotes.ask = Decimal("89.98"), Decimal("90.00")
    clock.now += dt.timedelta(seconds=1)
    assert await broker.match_open_orders(limit=10) == 1  # a quote taken after it: filled at its limit
    filled = await broker.get_order(access_token=who, broker_order_id=late[0].broker_order_id)
    assert filled is not None and filled.filled_avg_price == Decimal("95")


async def test_a_quote_without_a_usable_price_fills_nothing(db: Database) -> None:
    quotes = ScriptedQuotes("99.98", "100.00")
    broker = PaperBroker(db, quotes)  # type: ignore[arg-type]
    who = account()
    resting = await broker.submit_order(
        access_token=who, order=request(type=OrderType.LIMIT, limit_price=Decimal("50"))
    )
    quotes.ask = Decimal("0")  # "no ask" as some feeds report it
    assert await broker.match_open_orders(limit=10) == 0
    found = await broker.get_order(access_token=who, broker_order_id=resting.broker_order_id)
    assert found is not None and found.status is BrokerOrderStatus.NEW
    with pytest.raises(BrokerRejected) as rejected:
        await broker.submit_order(access_token=who, order=request())
    assert rejected.value.status_code == 422 and "ask" in rejected.value.reason


# --------------------------------------------------------------------------- when the database fails
async def test_no_database_connection_in_time_means_nothing_sent(
    database_url: str, db: Database, market: MarketData
) -> None:
    tiny = Database(create_engine(make_settings(database_url), pool_size=1, max_overflow=0, pool_timeout=0.2))
    broker = PaperBroker(tiny, market.provider)
    try:
        async with tiny.own_transaction() as held:
            await held.connection()  # the only connection is taken
            with pytest.raises(PaperBrokerUnavailable) as busy:
                await broker.submit_order(access_token=account(), order=request())
            with pytest.raises(PaperBrokerUnavailable):
                await broker.get_order(access_token=account(), broker_order_id=str(uuid.uuid4()))
        assert isinstance(busy.value, UpstreamError) and busy.value.maybe_sent is False
        assert await rows(db) == []
    finally:
        await tiny.dispose()


async def test_a_statement_that_fails_after_it_was_sent_is_an_unknown_outcome(
    database_url: str, db: Database, market: MarketData
) -> None:
    """Statement timeout mid-INSERT (a row trigger makes the INSERT slow): the order may exist, so it is
    BrokerOutcomeUnknown, never "rejected" — and the reconciler's lookup settles it."""
    slow = Database(
        create_engine(
            make_settings(database_url),
            pool_size=2,
            max_overflow=0,
            connect_args={"timeout": 5, "server_settings": {"statement_timeout": "100"}},
        )
    )
    broker = PaperBroker(slow, market.provider)
    who, order = account(), request()
    try:
        async with db.own_transaction() as session:
            await session.execute(
                text(
                    "CREATE FUNCTION paper_orders_slow() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER paper_orders_slow BEFORE INSERT ON paper_orders "
                    "FOR EACH ROW EXECUTE FUNCTION paper_orders_slow()"
                )
            )
        with pytest.raises(BrokerOutcomeUnknown) as unknown:
            await broker.submit_order(access_token=who, order=order)
        assert unknown.value.maybe_sent is True
    finally:
        async with db.own_transaction() as session:
            await session.execute(text("DROP TRIGGER IF EXISTS paper_orders_slow ON paper_orders"))
            await session.execute(text("DROP FUNCTION IF EXISTS paper_orders_slow()"))
        await slow.dispose()
    # Here the timeout rolled the INSERT back: the reconciler finds nothing (and would reject after grace).
    assert (
        await PaperBroker(db, market.provider).get_order_by_client_order_id(
            access_token=who, client_order_id=order.client_order_id
        )
        is None
    )


async def test_a_value_the_database_refuses_is_a_rejection_and_nothing_placed(
    broker: PaperBroker, db: Database
) -> None:
    with pytest.raises(BrokerRejected) as refused:  # PostgreSQL text cannot hold NUL: SQLSTATE 22021
        await broker.submit_order(access_token=account(), order=request(client_order_id="td-\x00"))
    assert refused.value.status_code == 422
    assert await rows(db) == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"qty": Decimal("1E+140000")},  # asyncpg would send this as 0
        {"qty": Decimal("1E+30")},
        {"qty": Decimal("1E-31")},
        {"type": OrderType.LIMIT, "limit_price": Decimal("1." + "0" * 30 + "1")},
    ],
)
async def test_amounts_the_table_cannot_hold_faithfully_are_refused_before_the_database(
    broker: PaperBroker, db: Database, overrides: dict[str, Any]
) -> None:
    with pytest.raises(BrokerRejected) as refused:
        await broker.submit_order(access_token=account(), order=request(**overrides))
    assert refused.value.status_code == 422
    assert await rows(db) == []
    # The bounds are generous: 29 digits before the point and 30 after still round-trip exactly.
    big = Decimal("9" * 29 + "." + "1" * 30)
    placed = await broker.submit_order(access_token=account(), order=request(qty=big))
    assert str(placed.qty) == str(big) and str(placed.filled_qty) == str(big)


async def test_no_quote_and_no_way_to_look_for_an_earlier_order_is_an_unknown_outcome(
    database_url: str,
) -> None:
    """The quote failed, so nothing was placed now; but whether an earlier attempt placed the order
    cannot be checked (no connection): "nothing sent" would be a guess, so the outcome is unknown."""
    tiny = Database(create_engine(make_settings(database_url), pool_size=1, max_overflow=0, pool_timeout=0.2))
    broker = PaperBroker(tiny, FailingQuotes(UpstreamTimeout("alpaca-data")))  # type: ignore[arg-type]
    try:
        async with tiny.own_transaction() as held:
            await held.connection()
            with pytest.raises(BrokerOutcomeUnknown):
                await broker.submit_order(access_token=account(), order=request())
    finally:
        await tiny.dispose()
