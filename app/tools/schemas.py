"""The tools' argument models: every argument is hostile until one of these has validated it.

An assistant fills these arguments from model output and a front end from user input, so each model
is closed and strict:

* ``extra="forbid"``: an unknown key is an error naming it;
* ``strict=True``: no coercion – ``"100"`` is not a number, ``1.0`` is not an integer, ``true`` is
  neither. (A JSON integer *is* accepted where a number is expected: ``{"spot": 100}`` is valid.
  Pydantic's strict float accepts ``int`` – JSON has one number type – and rejects ``bool`` and
  ``str``.)
* finite numbers only (``allow_inf_nan=False``): NaN and ±Infinity – which Python's ``json`` also
  produces for ``NaN``, ``Infinity`` and an overflowing literal such as ``1e309`` – are refused;
* every number, string and list is bounded (below), every choice is an enum.

No tool takes a path, a URL, a shell fragment or an SQL fragment: the only free-form strings are a
ticker symbol (``^[A-Za-z][A-Za-z0-9.]{0,9}$``, upper-cased after validation, exactly like the
market-data routes, so a tool call and ``GET /v1/market-data/...`` share cache entries) and two
ISO 8601 instants (at most 64 characters, parsed by the market-data parser).

Bounds (all checked by the server; the published JSON Schema states them in the descriptions only,
see :mod:`app.tools.registry`):

==================  ======================================  ======================================
argument            accepted                                 why
==================  ======================================  ======================================
spot, strike        1e-6 <= x <= 1e9                         a price (*)
t_years             1e-6 <= x <= 100                         years to expiry (1e-6 y = 32 s) (*)
sigma               1e-4 <= x <= 10                          0.01 % to 1000 % a year (*)
rate, dividend_y.   -1 <= x <= 1                             continuously compounded, per year
price (IV)          0 <= x <= 1e9                            the option premium
options             1 to 10,000 items                        the batch cap of the contract
symbol              1-10 chars, a letter then [A-Z0-9.]      the market-data symbol rule
timeframe           1Min | 5Min | 1Hour | 1Day               default 1Day
start, end          ISO 8601, 1970-01-01 .. now + 1 day      start <= end (UTC when no offset)
fast                1 <= n <= 9,999                          default 20
slow                2 <= n <= 10,000, slow > fast            default 50
commission          0 <= x < 1                               a fraction of the traded value
initial_cash        0 < x <= 1e12                            default 100,000
==================  ======================================  ======================================

(*) The lower bounds keep every result finite: at the (forward) money gamma is about
φ(0) e^(-qT) / (S σ √T), which tends to infinity as S σ √T → 0 (a subnormal strike even overflows
the price), and JSON has no Infinity. With these bounds S σ √T >= 1e-13 and every result is finite;
the property tests in tests/tools/test_registry.py check it over the whole box.

``greeks`` takes one option or a batch in one model (the contract's single tool): either the seven
single-option fields, or ``options`` – exactly one form. Both forms' fields are nullable, so the
published schema stays a plain object (strict function calling requires every property and refuses
``oneOf`` and a root ``anyOf``); the "exactly one form" rule is checked here, with the error on the
offending field.

Optional arguments (``timeframe``, ``fast``, ``slow``, ``commission``, ``initial_cash`` and the
``greeks`` form fields) may be omitted *or* given as ``null``: strict function calling makes the
model send every property, with ``null`` for "not given".
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from app.market.schemas import FORMAT_MESSAGE, normalise_symbol, parse_instant

__all__ = [
    "MAX_OPTIONS",
    "BacktestArgs",
    "GreeksArgs",
    "ImpliedVolArgs",
    "OptionArgs",
    "QuoteArgs",
    "ToolArgs",
]

MAX_OPTIONS: Final = 10_000
MIN_PRICE: Final = 1e-6
MAX_PRICE: Final = 1e9
MIN_T_YEARS: Final = 1e-6
MIN_SIGMA: Final = 1e-4
MAX_T_YEARS: Final = 100.0
MAX_SIGMA: Final = 10.0
MAX_RATE: Final = 1.0
MAX_FAST: Final = 9_999
MAX_SLOW: Final = 10_000
MAX_INITIAL_CASH: Final = 1e12
MAX_INSTANT_CHARS: Final = 64

DEFAULT_TIMEFRAME: Final = "1Day"
DEFAULT_FAST: Final = 20
DEFAULT_SLOW: Final = 50
DEFAULT_COMMISSION: Final = 0.0
DEFAULT_INITIAL_CASH: Final = 100_000.0


def slow_above_fast(cls: type[BaseModel], slow: int, info: ValidationInfo) -> int:
    """A ``slow`` field validator: the slow SMA window must be longer than ``fast`` (validated before it)."""
    fast = info.data.get("fast")
    if fast is not None and slow <= fast:
        raise ValueError(f"must be greater than fast ({fast})")
    return slow


class ToolArgs(BaseModel):
    """Base of every argument model: closed, strict, finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


def _null_means(default: Any) -> BeforeValidator:
    """``null`` is "not given": the default (strict clients must send every property)."""
    return BeforeValidator(lambda value: default if value is None else value)


# --------------------------------------------------------------------------------------------------
# field types

OptionType = Annotated[Literal["call", "put"], Field(description="'call' or 'put'.")]
Spot = Annotated[
    float, Field(ge=MIN_PRICE, le=MAX_PRICE, allow_inf_nan=False, description="Price of the underlying.")
]
Strike = Annotated[float, Field(ge=MIN_PRICE, le=MAX_PRICE, allow_inf_nan=False, description="Strike price.")]
TYears = Annotated[
    float,
    Field(
        ge=MIN_T_YEARS,
        le=MAX_T_YEARS,
        allow_inf_nan=False,
        description="Time to expiry in years (e.g. 0.25).",
    ),
]
Rate = Annotated[
    float,
    Field(
        ge=-MAX_RATE,
        le=MAX_RATE,
        allow_inf_nan=False,
        description="Risk-free rate, continuously compounded, per year, as a fraction (0.05 = 5 %).",
    ),
]
DividendYield = Annotated[
    float,
    Field(
        ge=-MAX_RATE,
        le=MAX_RATE,
        allow_inf_nan=False,
        description="Continuous dividend yield per year, as a fraction (0.01 = 1 %).",
    ),
]
Sigma = Annotated[
    float,
    Field(
        ge=MIN_SIGMA,
        le=MAX_SIGMA,
        allow_inf_nan=False,
        description="Volatility per year, as a fraction (0.2 = 20 %).",
    ),
]
Premium = Annotated[
    float,
    Field(ge=0, le=MAX_PRICE, allow_inf_nan=False, description="Observed option price (premium)."),
]
Symbol = Annotated[
    str,
    Field(
        min_length=1,
        max_length=10,
        pattern=r"^[A-Za-z][A-Za-z0-9.]{0,9}$",
        description="Ticker, case-insensitive: a letter, then letters, digits or '.' (e.g. AAPL, BRK.B).",
    ),
    AfterValidator(normalise_symbol),
]


def _instant(value: object) -> dt.datetime:
    if not isinstance(value, str):
        raise ValueError(FORMAT_MESSAGE)
    if len(value) > MAX_INSTANT_CHARS:
        raise ValueError(f"must be at most {MAX_INSTANT_CHARS} characters; {FORMAT_MESSAGE}")
    parsed = parse_instant(value)
    if not isinstance(parsed, dt.datetime):  # "" means "not given" to the HTTP parser; here it is required
        raise ValueError(FORMAT_MESSAGE)
    return parsed


def _instant_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "maxLength": MAX_INSTANT_CHARS, "description": description})


Start = Annotated[
    dt.datetime,
    BeforeValidator(_instant),
    _instant_schema(
        "First bar time, ISO 8601 (e.g. 2024-01-02 or 2024-01-02T14:30:00Z; UTC when no offset), "
        "between 1970-01-01 and now + 1 day; rounded up to the timeframe's grid."
    ),
]
End = Annotated[
    dt.datetime,
    BeforeValidator(_instant),
    _instant_schema(
        "Last bar time, ISO 8601 (UTC when no offset), not before start and at most now + 1 day "
        "(bars end at now); rounded down to the timeframe's grid."
    ),
]


# --------------------------------------------------------------------------------------------------
# models


class OptionArgs(ToolArgs):
    """One European option (Black-Scholes-Merton with a continuous dividend yield)."""

    option_type: OptionType
    spot: Spot
    strike: Strike
    t_years: TYears
    rate: Rate
    dividend_yield: DividendYield
    sigma: Sigma


SINGLE_OPTION_FIELDS: Final = tuple(OptionArgs.model_fields)


class GreeksArgs(ToolArgs):
    """One option (the seven single-option fields, ``options`` null) or a batch (``options``, the
    seven fields null)."""

    option_type: OptionType | None = Field(default=None, description="'call' or 'put' (single option).")
    spot: Spot | None = Field(default=None, description="Price of the underlying (single option).")
    strike: Strike | None = Field(default=None, description="Strike price (single option).")
    t_years: TYears | None = Field(default=None, description="Time to expiry in years (single option).")
    rate: Rate | None = Field(
        default=None,
        description="Risk-free rate, continuously compounded, per year, as a fraction (single option).",
    )
    dividend_yield: DividendYield | None = Field(
        default=None, description="Continuous dividend yield per year, as a fraction (single option)."
    )
    sigma: Sigma | None = Field(
        default=None, description="Volatility per year, as a fraction, e.g. 0.2 (single option)."
    )
    options: list[OptionArgs] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_OPTIONS,
        description=f"A batch of 1 to {MAX_OPTIONS} options; null when the single-option fields are given.",
    )

    @model_validator(mode="after")
    def _exactly_one_form(self) -> Self:
        given = [name for name in SINGLE_OPTION_FIELDS if getattr(self, name) is not None]
        if self.options is not None:
            problems = [(name, "must be null when 'options' is given") for name in given]
        elif not given:
            problems = [("options", "required: give 'options' or the seven single-option fields")]
        else:
            problems = [
                (name, "required for a single option (or give 'options' instead)")
                for name in SINGLE_OPTION_FIELDS
                if getattr(self, name) is None
            ]
        if problems:
            # A ValidationError raised here keeps each problem on its own field (a ValueError would
            # land on the model as a whole). Only valid at the top level, which GreeksArgs is.
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("greeks_form", "{reason}", {"reason": message}),
                        loc=(name,),
                        input=None,
                    )
                    for name, message in problems
                ],
            )
        return self

    @property
    def is_batch(self) -> bool:
        return self.options is not None


class ImpliedVolArgs(ToolArgs):
    """One European option's observed price; the answer is the volatility that reproduces it."""

    option_type: OptionType
    price: Premium
    spot: Spot
    strike: Strike
    t_years: TYears
    rate: Rate
    dividend_yield: DividendYield


class BacktestArgs(ToolArgs):
    """An SMA-crossover backtest on the market-data provider's bars for one symbol."""

    symbol: Symbol
    timeframe: Annotated[
        Literal["1Min", "5Min", "1Hour", "1Day"],
        Field(description=f"Bar size; null means {DEFAULT_TIMEFRAME}."),
        _null_means(DEFAULT_TIMEFRAME),
    ] = DEFAULT_TIMEFRAME
    start: Start
    end: End
    fast: Annotated[
        int,
        Field(ge=1, le=MAX_FAST, description=f"Fast SMA window in bars; null means {DEFAULT_FAST}."),
        _null_means(DEFAULT_FAST),
    ] = DEFAULT_FAST
    slow: Annotated[
        int,
        Field(
            ge=2,
            le=MAX_SLOW,
            description=f"Slow SMA window in bars, greater than fast; null means {DEFAULT_SLOW}.",
        ),
        _null_means(DEFAULT_SLOW),
    ] = DEFAULT_SLOW
    commission: Annotated[
        float,
        Field(
            ge=0,
            lt=1,
            allow_inf_nan=False,
            description="Commission per fill as a fraction of the traded value (0.001 = 10 bp); null means 0.",
        ),
        _null_means(DEFAULT_COMMISSION),
    ] = DEFAULT_COMMISSION
    initial_cash: Annotated[
        float,
        Field(
            gt=0,
            le=MAX_INITIAL_CASH,
            allow_inf_nan=False,
            description="Starting cash; null means 100000.",
        ),
        _null_means(DEFAULT_INITIAL_CASH),
    ] = DEFAULT_INITIAL_CASH

    @field_validator("end")
    @classmethod
    def _end_not_before_start(cls, end: dt.datetime, info: ValidationInfo) -> dt.datetime:
        start = info.data.get("start")
        if start is not None and end < start:
            raise ValueError("must not be before start")
        return end

    _slow_above_fast = field_validator("slow")(slow_above_fast)


class QuoteArgs(ToolArgs):
    """The latest quote for one symbol."""

    symbol: Symbol
