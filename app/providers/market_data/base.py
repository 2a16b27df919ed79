"""The market-data interface every provider implements, and the values it returns.

Prices are ``Decimal`` end to end (never binary floats) and serialise as decimal strings; times are
timezone-aware UTC. The cache stores the JSON form (``quote_to_json`` / ``bars_to_json``), which is
also exactly what the HTTP routes answer.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable


class Timeframe(enum.StrEnum):
    MIN_1 = "1Min"
    MIN_5 = "5Min"
    HOUR_1 = "1Hour"
    DAY_1 = "1Day"

    @property
    def seconds(self) -> int:
        return _TIMEFRAME_SECONDS[self]


_TIMEFRAME_SECONDS = {Timeframe.MIN_1: 60, Timeframe.MIN_5: 300, Timeframe.HOUR_1: 3600, Timeframe.DAY_1: 86400}


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
        return f"{self.symbol}:{self.timeframe.value}:{iso(self.start)}:{iso(self.end)}:{self.limit}"


@runtime_checkable
class MarketDataProvider(Protocol):
    """``latest_quote`` and ``bars`` raise ``NotFound`` for a symbol the provider does not know and an
    ``UpstreamError`` (app.core.http) when the provider cannot answer."""

    name: str

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
            {"t": iso(b.t), "o": money(b.o), "h": money(b.h), "l": money(b.l), "c": money(b.c), "v": money(b.v)}
            for b in bars
        ],
    }
