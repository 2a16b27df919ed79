"""The backtests feature's dependencies: this process's job runner, the per-user upload limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.deps import CurrentUserDetached
from app.backtests.service import BacktestRunner
from app.core.deps import LimiterDep, SettingsDep


async def get_runner(request: Request) -> BacktestRunner:
    runner: BacktestRunner = request.app.state.backtests
    return runner


RunnerDep = Annotated[BacktestRunner, Depends(get_runner)]


async def backtest_rate_limit(
    request: Request, user: CurrentUserDetached, limiter: LimiterDep, settings: SettingsDep
) -> None:
    """RATE_LIMIT_BACKTESTS per user on uploads (429 + Retry-After past it)."""
    await limiter.enforce(request, settings.rate_limit_backtests, "backtests", str(user.id))


BacktestRateLimit = Annotated[None, Depends(backtest_rate_limit)]
