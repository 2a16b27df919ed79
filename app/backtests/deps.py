"""The backtests feature's dependencies: this process's job runner, the per-user upload limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.deps import PerUserLimit
from app.backtests.service import BacktestRunner


async def get_runner(request: Request) -> BacktestRunner:
    runner: BacktestRunner = request.app.state.backtests
    return runner


RunnerDep = Annotated[BacktestRunner, Depends(get_runner)]


# On uploads.
BacktestRateLimit = Annotated[None, Depends(PerUserLimit("rate_limit_backtests", name="backtests"))]
