"""The market-data interface every provider implements, and the values it returns.

Prices are ``Decimal`` end to end (never binary floats) and serialise as decimal strings; times are
timezone-aware UTC. The cache stores what the HTTP routes answer: a quote as its JSON object
(``quote_to_json``), bars as the finished JSON body (``bars_body``).

Every provider also names the **grid** its bars start on, per timeframe (``MarketDataProvider.grid``): the
service rounds a query's ``start`` up and its ``end`` down to it before the query keys the cache, which
changes no answer (no bar starts between a bound and its rounded value) but makes every request that
differs only below the grid share one cache entry. Two grids exist: ``EpochGrid`` (whole multiples of
the step since 1970-01-01T00:00:00Z: 1Min, 5Min, 1Hour everywhere, and the synthetic provider's 1Day,
00:00 UTC) and ``MidnightGrid`` (00:00 local time in a zone, whatever the day's length: Alpaca's 1Day,
00:00 America/New_York).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo


class Timeframe(enum.StrEnum):
    MIN_1 = "1Min"
    MIN_5 = "5Min"
    HOUR_1 = "1Hour"
    DAY_1 = "1Day"

    @property
    def seconds(self) -> int:
        return _TIMEFRAME_SECONDS[self]


_TIMEFRAME_SECONDS = {
    Timeframe.MIN_1: 60,
    Timeframe.MIN_5: 300,
    Timeframe.HOUR_1: 3600,
    Timeframe.DAY_1: 86400,
}


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


class Grid(Protocol):
    """The instants bars may start at, for one timeframe of one provider. All values are aware UTC."""

    def floor(self, instant: dt.datetime) -> dt.datetime:
        """The latest grid instant at or before ``instant``."""
        ...

    def ceil(self, instant: dt.datetime) -> dt.datetime:
        """The earliest grid instant at or after ``instant``."""
        ...

    def back(self, instant: dt.datetime, steps: int) -> dt.datetime:
        """The grid instant ``steps`` steps before the grid instant ``instant``."""
        ...


@dataclass(frozen=True, slots=True)
class EpochGrid:
    """Whole multiples of ``step`` seconds since the Unix epoch (UTC); exact integer arithmetic."""

    step: int

    def _us(self, instant: dt.datetime) -> tuple[int, int]:
        return (instant - EPOCH) // _MICROSECOND, self.step * 1_000_000

    def floor(self, instant: dt.datetime) -> dt.datetime:
        us, step = self._us(instant)
        return EPOCH + (us // step * step) * _MICROSECOND

    def ceil(self, instant: dt.datetime) -> dt.datetime:
        us, step = self._us(instant)
        return EPOCH + (-(-us // step) * step) * _MICROSECOND

    def back(self, instant: dt.datetime, steps: int) -> dt.datetime:
        return instant - dt.timedelta(seconds=self.step * steps)


@dataclass(frozen=True, slots=True)
class MidnightGrid:
    """00:00 local time in ``zone`` on every day (23, 24 or 25 hours apart around DST changes). Only for
    zones whose midnight always exists and is unambiguous (their DST changes happen at another hour)."""

    zone: ZoneInfo

    def _midnight(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(0), self.zone).astimezone(dt.UTC)

    def floor(self, instant: dt.datetime) -> dt.datetime:
        return self._midnight(instant.astimezone(self.zone).date())

    def ceil(self, instant: dt.datetime) -> dt.datetime:
        day = instant.astimezone(self.zone).date()
        midnight = self._midnight(day)
        return midnight if midnight >= instant else self._midnight(day + dt.timedelta(days=1))

    def back(self, instant: dt.datetime, steps: int) -> dt.datetime:
        return self._midnight(instant.astimezone(self.zone).date() - dt.timedelta(days=steps))


EPOCH_GRIDS: dict[Timeframe, Grid] = {tf: EpochGrid(tf.seconds) for tf in Timeframe}


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal | None  # the last trade price; None when the provider reports no trade
    timestamp: dt.datetime


@dataclass(frozen=True, slots=True)
class Bar:
    t: dt.datetime  # bar start
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741 - the field name is the contract's
    c: Decimal
    v: Decimal


@dataclass(frozen=True, slots=True)
class BarsQuery:
    symbol: str
    timeframe: Timeframe
    start: dt.datetime
    end: dt.datetime
    limit: int

    @property
    def cache_key(self) -> str:
        # "body:": the entry is the finished JSON body (bytes). The prefix keeps it apart from the JSON-object
        # entries earlier versions stored under the bare query, so processes of both versions sharing one
        # Redis during a rolling deploy never read each other's format.
        return f"body:{self.symbol}:{self.timeframe.value}:{iso(self.start)}:{iso(self.end)}:{self.limit}"


@runtime_checkable
class MarketDataProvider(Protocol):
    """``latest_quote`` and ``bars`` raise ``NotFound`` for a symbol the provider does not know and an
    ``UpstreamError`` (app.core.http) when the provider cannot answer."""

    name: str

    def grid(self, timeframe: Timeframe) -> Grid:
        """Where this provider's bars of ``timeframe`` start (see the module docstring)."""
        ...

    async def latest_quote(self, symbol: str) -> Quote: ...

    async def bars(self, query: BarsQuery) -> list[Bar]: ...

    async def aclose(self) -> None: ...


def iso(value: dt.datetime) -> str:
    """UTC ISO 8601 with a 'Z' (seconds, plus microseconds when present)."""
    value = value.astimezone(dt.UTC)
    text = value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text + "Z"


def money(value: Decimal) -> str:
    """A decimal string without exponent notation ('1E+2' -> '100')."""
    return format(value, "f")


def quote_to_json(quote: Quote) -> dict[str, Any]:
    return {
        "symbol": quote.symbol,
        "bid": money(quote.bid),
        "ask": money(quote.ask),
        "last": money(quote.last) if quote.last is not None else None,
        "timestamp": iso(quote.timestamp),
    }


def bars_to_json(query: BarsQuery, bars: list[Bar]) -> dict[str, Any]:
    return {
        "symbol": query.symbol,
        "timeframe": query.timeframe.value,
        "bars": [
            {
                "t": iso(b.t),
                "o": money(b.o),
                "h": money(b.h),
                "l": money(b.l),
                "c": money(b.c),
                "v": money(b.v),
            }
            for b in bars
        ],
    }


def bars_body(query: BarsQuery, bars: list[Bar]) -> bytes:
    """The bars answer as the UTF-8 JSON body the route sends (and the cache stores): ~5 µs a bar, pure
    Python, so the caller runs it in a thread for large answers."""
    return json.dumps(bars_to_json(query, bars), separators=(",", ":")).encode()
