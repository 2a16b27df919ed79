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


def parse_instant(value: object) -> object:
    """ISO 8601 date or date-time; naive values are UTC; empty means "not given". Numbers (epoch seconds)
    are refused: ambiguous."""
    if value is None or isinstance(value, dt.datetime):
        return value
    if value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date or date-time, e.g. 2024-01-02 or 2024-01-02T15:30:00Z")
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            "must be an ISO 8601 date or date-time, e.g. 2024-01-02 or 2024-01-02T15:30:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


Symbol = Annotated[
    str,
    Path(description="Ticker, case-insensitive: a letter then up to 9 letters, digits or '.'", examples=["AAPL"]),
    AfterValidator(normalise_symbol),
]
Instant = Annotated[dt.datetime | None, BeforeValidator(parse_instant)]
StartQuery = Annotated[Instant, Query(description="Earliest bar start (ISO 8601; UTC if no offset). "
                                                  "Default: end minus limit bars.")]
EndQuery = Annotated[Instant, Query(description="Latest bar start (ISO 8601; UTC if no offset). Default and "
                                                "upper bound: now.")]
TimeframeQuery = Annotated[Timeframe, Query(description="Bar size.")]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_BARS_LIMIT, description="Maximum number of bars (1-10000).")]


class QuoteOut(BaseModel):
    symbol: str = Field(examples=["AAPL"])
    bid: str = Field(examples=["189.95"])
    ask: str = Field(examples=["190.05"])
    last: str | None = Field(examples=["190.01"], description="Last trade price; null if the provider has none.")
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
