"""Request parsing and response shapes for market data.

Money and volumes are decimal strings; times are UTC ISO 8601 with a 'Z'.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from app.providers.market_data.base import Timeframe

SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
DEFAULT_BARS_LIMIT = 1000
MAX_BARS_LIMIT = 10_000


def normalise_symbol(value: str) -> str:
    symbol = value.upper()
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError("must be 1-10 characters: a letter, then letters, digits or '.' (e.g. AAPL, BRK.B)")
    return symbol


FORMAT_MESSAGE = "must be an ISO 8601 date or date-time, e.g. 2024-01-02 or 2024-01-02T15:30:00Z"
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
AHEAD = dt.timedelta(days=1)


def _range_message(now: dt.datetime) -> str:
    latest = (now + AHEAD).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return f"must be between 1970-01-01T00:00:00Z and 1 day from now ({latest})"


def parse_instant(value: object) -> object:
    """ISO 8601 date or date-time; naive values are UTC; empty means "not given". Numbers (epoch seconds)
    are refused: ambiguous. The instant must lie between 1970-01-01T00:00:00Z and now + 1 day: the range
    market data can mean, and far inside what ``datetime`` can compute with (an offset that pushes a year-1
    or year-9999 value out of range is refused here, not met as an OverflowError later)."""
    if value is None:
        return value
    if value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(FORMAT_MESSAGE) from None
    else:
        raise ValueError(FORMAT_MESSAGE)
    now = dt.datetime.now(dt.UTC)
    try:
        parsed = parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    except (OverflowError, ValueError):  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 once in UTC
        raise ValueError(_range_message(now)) from None
    if not EARLIEST <= parsed <= now + AHEAD:
        raise ValueError(_range_message(now))
    return parsed


Symbol = Annotated[
    str,
    Path(
        description="Ticker, case-insensitive: a letter then up to 9 letters, digits or '.'",
        examples=["AAPL"],
    ),
    AfterValidator(normalise_symbol),
]
Instant = Annotated[dt.datetime | None, BeforeValidator(parse_instant)]
StartQuery = Annotated[
    Instant,
    Query(
        description="Earliest bar start (ISO 8601; UTC if no offset; 1970-01-01 "
        "to now + 1 day), rounded up to the timeframe's grid. "
        "Default: end minus limit bars."
    ),
]
EndQuery = Annotated[
    Instant,
    Query(
        description="Latest bar start (ISO 8601; UTC if no offset; 1970-01-01 to "
        "now + 1 day), rounded down to the timeframe's grid. Default "
        "and upper bound: now."
    ),
]
TimeframeQuery = Annotated[Timeframe, Query(description="Bar size.")]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_BARS_LIMIT, description="Maximum number of bars (1-10000).")]


class QuoteOut(BaseModel):
    symbol: str = Field(examples=["AAPL"])
    bid: str = Field(examples=["189.95"])
    ask: str = Field(examples=["190.05"])
    last: str | None = Field(
        examples=["190.01"], description="Last trade price; null if the provider has none."
    )
    timestamp: str = Field(examples=["2024-01-02T15:30:00Z"])


class BarOut(BaseModel):
    t: str = Field(examples=["2024-01-02T15:30:00Z"], description="Bar start, UTC")
    o: str
    h: str
    l: str  # noqa: E741 - contract name
    c: str
    v: str = Field(description="Volume (shares), a decimal string")


class BarsOut(BaseModel):
    symbol: str
    timeframe: Timeframe
    bars: list[BarOut]
