"""The parameters of an uploaded backtest (multipart text fields) and the job as the API shows it."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from app.tools.schemas import (
    DEFAULT_COMMISSION,
    DEFAULT_FAST,
    DEFAULT_INITIAL_CASH,
    DEFAULT_SLOW,
    MAX_FAST,
    MAX_INITIAL_CASH,
    MAX_SLOW,
    slow_above_fast,
)

_INTEGER = re.compile(r"\s*[0-9]{1,6}\s*")
_DECIMAL = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\s*")


def _integer_text(value: Any) -> Any:
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            raise ValueError("must be a whole number written in digits")
        return int(value)
    return value


def _decimal_text(value: Any) -> Any:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise ValueError("must be a finite decimal number (e.g. 0.001)")
        return float(value)
    return value


class BacktestParams(BaseModel):
    """``fast``, ``slow``, ``commission``, ``initial_cash``: the same bounds as the ``backtest`` tool."""

    model_config = ConfigDict(extra="forbid")

    fast: Annotated[int, BeforeValidator(_integer_text), Field(ge=1, le=MAX_FAST, strict=True)] = DEFAULT_FAST
    slow: Annotated[
        int, BeforeValidator(_integer_text), Field(ge=2, le=MAX_SLOW, strict=True, validate_default=True)
    ] = DEFAULT_SLOW
    commission: Annotated[
        float, BeforeValidator(_decimal_text), Field(ge=0, lt=1, allow_inf_nan=False, strict=True)
    ] = DEFAULT_COMMISSION
    initial_cash: Annotated[
        float,
        BeforeValidator(_decimal_text),
        Field(gt=0, le=MAX_INITIAL_CASH, allow_inf_nan=False, strict=True),
    ] = DEFAULT_INITIAL_CASH

    _slow_above_fast = field_validator("slow")(slow_above_fast)


class BacktestAccepted(BaseModel):
    id: uuid.UUID
    status: Literal["queued", "running", "done", "failed"]


class BacktestJobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: Literal["queued", "running", "done", "failed"]
    progress: float = Field(ge=0, le=1, description="Fraction of the file read so far (0..1).")
    result: dict[str, Any] | None = Field(
        description="When done: {final_equity, total_return, n_trades, max_drawdown, bars}."
    )
    error: str | None = Field(description="When failed: why.")
    params: dict[str, Any]
    rows: int = Field(description="Data rows in the uploaded file.")
    file_bytes: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
