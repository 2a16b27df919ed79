"""Order requests and responses. Money and quantities are decimal strings in responses; requests accept
strings or JSON numbers (contract §3). Validation names the field of every problem (422)."""

from __future__ import annotations

import datetime as dt
import decimal
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from app.market.schemas import SYMBOL_REQUEST_PATTERN, normalise_symbol

MAX_INTEGER_DIGITS = 10  # no order is for ten billion shares or at a ten-billion-dollar limit
QTY_DECIMALS = 9  # Alpaca accepts fractional quantities to 9 decimal places
PRICE_DECIMALS_BELOW_ONE = 4  # Alpaca: sub-dollar prices to 4 decimals,
PRICE_DECIMALS = 2  # one dollar and above to 2


# A decimal as a string: ASCII digits, an optional point and exponent (Decimal() alone also takes "NaN",
# "Infinity" and non-ASCII digits). The document states this, the bounds and the decimal places below.
DECIMAL_STRING = re.compile(r"^\s*\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$")
_UPPER = Decimal(10) ** MAX_INTEGER_DIGITS
_NO_UNDERFLOW = decimal.Context(Emin=decimal.MIN_EMIN, Emax=decimal.MAX_EMAX)


# JSON Schema's numeric keywords apply to the number form, `pattern` to the string form.
_DOCUMENTED_DECIMAL = {
    "exclusiveMinimum": 0,
    "exclusiveMaximum": float(_UPPER),
    "pattern": DECIMAL_STRING.pattern,
}


def _decimal(value: Any) -> Decimal:
    """A finite decimal from a string or a JSON number (never a boolean), normalised ("10.50" → 10.5)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PydanticCustomError("decimal", "must be a decimal number, as a string or a JSON number")
    if isinstance(value, str) and not DECIMAL_STRING.fullmatch(value):
        raise PydanticCustomError("decimal", 'must be a decimal number, e.g. "10" or "101.25"')
    try:
        # A float has been parsed from JSON already: its shortest repr is the number the client wrote.
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise PydanticCustomError("decimal", 'must be a decimal number, e.g. "10" or "101.25"') from None
    if not number.is_finite():
        raise PydanticCustomError("decimal", "must be a finite number")
    if number <= 0:
        raise PydanticCustomError("decimal", "must be greater than 0")
    if number.adjusted() >= MAX_INTEGER_DIGITS:
        raise PydanticCustomError(
            "decimal", f"must have at most {MAX_INTEGER_DIGITS} digits before the point"
        )
    # Wide exponent range: under the default context 1e-1000030 normalises (underflows) to 0.
    normal = number.normalize(_NO_UNDERFLOW)
    return normal.quantize(Decimal(1)) if normal == normal.to_integral_value() else normal


def _decimals(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _qty(value: Decimal) -> Decimal:
    if _decimals(value) > QTY_DECIMALS:
        raise PydanticCustomError("decimal", f"must have at most {QTY_DECIMALS} decimal places")
    return value


def _price(value: Decimal) -> Decimal:
    allowed = PRICE_DECIMALS if value >= 1 else PRICE_DECIMALS_BELOW_ONE
    if _decimals(value) > allowed:
        raise PydanticCustomError(
            "decimal", f"must have at most {PRICE_DECIMALS} decimal places (4 below 1.00)"
        )
    return value


Qty = Annotated[
    Decimal,
    BeforeValidator(_decimal),
    AfterValidator(_qty),
    Field(
        description="Shares, > 0 and < 10^10, at most 9 decimal places; a string or a number",
        examples=["10"],
        json_schema_extra=_DOCUMENTED_DECIMAL,
    ),
]
Price = Annotated[
    Decimal,
    BeforeValidator(_decimal),
    AfterValidator(_price),
    Field(
        description="Limit price, > 0 and < 10^10, cents (4 decimals below 1.00); a string or a number",
        examples=["101.25"],
        json_schema_extra=_DOCUMENTED_DECIMAL,
    ),
]
Symbol = Annotated[
    str,
    Field(
        min_length=1,
        max_length=10,
        description="Case-insensitive, upper-cased; ^[A-Z][A-Z0-9.]{0,9}$ once upper-cased",
        examples=["AAPL"],
        json_schema_extra={"pattern": SYMBOL_REQUEST_PATTERN},
    ),
    AfterValidator(normalise_symbol),
]


class OrderCreate(BaseModel):
    """``POST /v1/orders``. Rules: a limit order needs ``limit_price``, a market order must not have one;
    a fractional ``qty`` is only accepted with ``time_in_force: day`` (as Alpaca requires)."""

    model_config = ConfigDict(extra="forbid")

    symbol: Symbol
    qty: Qty
    side: Literal["buy", "sell"]
    type: Literal["market", "limit"]
    time_in_force: Literal["day", "gtc", "ioc", "fok"]
    limit_price: Annotated[Price | None, Field(validate_default=True)] = None

    @field_validator("time_in_force", mode="after")
    @classmethod
    def _fractional_is_day(cls, value: str, info: ValidationInfo) -> str:
        qty = info.data.get("qty")
        if qty is not None and qty != qty.to_integral_value() and value != "day":
            raise PydanticCustomError("time_in_force", "must be day for a fractional qty")
        return value

    @field_validator("limit_price", mode="after")
    @classmethod
    def _limit_price_matches_type(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        kind = info.data.get("type")
        if kind == "limit" and value is None:
            raise PydanticCustomError("limit_price", "required for a limit order")
        if kind == "market" and value is not None:
            raise PydanticCustomError("limit_price", "not allowed on a market order")
        return value


class OrderOut(BaseModel):
    id: str
    status: str
    symbol: str
    qty: str
    side: str
    type: str
    time_in_force: str
    limit_price: str | None
    filled_qty: str
    filled_avg_price: str | None
    broker_order_id: str | None
    client_order_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    reject_reason: str | None = Field(None, description="Why the order was rejected, when it was")


class OrdersPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None
