"""The alerts feature's dependencies: the per-user limit on POST /v1/alerts/discord."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.auth.deps import PerUserLimit

AlertRateLimit = Annotated[None, Depends(PerUserLimit("rate_limit_alerts", name="alerts"))]
