"""Request parsing and response shapes for market data.

Money and volumes are decimal strings; times are UTC ISO 8601 with a 'Z'.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from app.providers.market_data.base import Timeframe

SYMBOL_PATTERN = re.compile(r"^[A-Z][A-Z0-9.]{0,9}$")
DEFAULT_BARS_LIMIT = 1000
MAX_BARS_LIMIT = 10_000


# What a client may send: the same, in either case. ASCII only: str.upper() folds some non-ASCII letters
# into ASCII ones ("ſ" -> "S", "ﬀ" -> "FF"), which would accept symbols the documented pattern refuses.
SYMBOL_REQUEST_PATTERN = r"^[A-Za-z][A-Za-z0-9.]{0,9}$"


def normalise_symbol(value: str) -> str:
    symbol = value.upper() if value.isascii() else ""
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError("must be 1-10 characters: a letter, then letters, digits or '.' (e.g. AAPL, BRK.B)")
    return symbol


FORMAT_MESSAGE = "must be an ISO 8601 date or date-time, e.g. 2024-01-02 or 2024-01-02T15:30:00Z"
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
AHEAD = dt.timedelta(days=1)


def _range_message(now: dt.datetime) -> str:
    latest = (now + AHEAD).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return f"must be between 1970-01-01T00:00:00Z and 1 day from now ({latest})"


# The accepted syntax: a date, or a date and a time (minutes, optional seconds with up to 6 decimals) with an
# optional offset ("Z" or ±HH:MM). Checked before parsing, so the server accepts exactly what the
# document's pattern describes (datetime.fromisoformat alone takes more: "20240102", week dates, ...).
_TIME = r"T([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
INSTANT_SYNTAX = re.compile(rf"^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}({_TIME})?$")
_MONTH_DAYS = (
    r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))"
)


def instant_pattern(today: dt.date) -> str:
    """The document's pattern for start/end: the syntax above, with only the calendar dates from
    1970-01-01 to the day before ``today`` — every one of them inside the accepted range whatever the
    offset, until now + 1 day moves on (the server also accepts up to now + 1 day: the description says so;
    a pattern cannot follow the clock). Built when the document is."""
    last = today - dt.timedelta(days=1)
    full_years = "|".join(str(y) for y in range(EARLIEST.year, last.year))
    leap_years = "|".join(str(y) for y in range(EARLIEST.year, last.year) if calendar.isleap(y))
    this_year = []
    for month in range(1, last.month + 1):
        days = last.day if month == last.month else calendar.monthrange(last.year, month)[1]
        this_year.append(f"{month:02d}-({'|'.join(f'{d:02d}' for d in range(1, days + 1))})")
    dates = [f"({full_years})-{_MONTH_DAYS}", f"{last.year}-({'|'.join(this_year)})"]
    if leap_years:
        dates.append(f"({leap_years})-02-29")
    return f"^({'|'.join(dates)})({_TIME})?$"


def _document_instant(schema: dict[str, Any]) -> None:
    schema.pop("anyOf", None)
    schema.update(type="string", pattern=instant_pattern(dt.datetime.now(dt.UTC).date()))


def parse_instant(value: object) -> object:
    """ISO 8601 date or date-time (``INSTANT_SYNTAX``); naive values are UTC. Numbers (epoch seconds) are
    refused: ambiguous; so is an empty value (leave the parameter out instead). The instant must lie
    between 1970-01-01T00:00:00Z and now + 1 day: the range market data can mean, and far inside what
    ``datetime`` can compute with (an offset that pushes a year-1 or year-9999 value out of range is
    refused here, not met as an OverflowError later)."""
    if value is None:
        return value
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        if not INSTANT_SYNTAX.fullmatch(value):
            raise ValueError(FORMAT_MESSAGE)
        try:
            parsed = dt.datetime.fromisoformat(value)
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
        json_schema_extra={"pattern": SYMBOL_REQUEST_PATTERN},
    ),
    AfterValidator(normalise_symbol),
]
Instant = Annotated[dt.datetime | None, BeforeValidator(parse_instant)]
StartQuery = Annotated[
    Instant,
    Query(
        description="Earliest bar start (ISO 8601 date or date-time, e.g. 2024-01-02 or "
        "2024-01-02T15:30:00Z; UTC if no offset; 1970-01-01 to now + 1 day), rounded up to the "
        "timeframe's grid. Default: end minus limit bars.",
        json_schema_extra=_document_instant,
    ),
]
EndQuery = Annotated[
    Instant,
    Query(
        description="Latest bar start (ISO 8601 date or date-time; UTC if no offset; 1970-01-01 to "
        "now + 1 day), rounded down to the timeframe's grid. Default and upper bound: now.",
        json_schema_extra=_document_instant,
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
