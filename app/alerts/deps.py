"""The alerts feature's dependencies: the per-user limit on POST /v1/alerts/discord."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.deps import CurrentUserDetached
from app.core.deps import LimiterDep, SettingsDep


async def alert_rate_limit(
    request: Request, user: CurrentUserDetached, limiter: LimiterDep, settings: SettingsDep
) -> None:
    """RATE_LIMIT_ALERTS per user (429 + Retry-After past it)."""
    await limiter.enforce(request, settings.rate_limit_alerts, "alerts", str(user.id))


AlertRateLimit = Annotated[None, Depends(alert_rate_limit)]
