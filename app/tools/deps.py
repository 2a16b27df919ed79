"""The tools feature's dependencies: the sandbox (started on first use), the per-user execution limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.deps import CurrentUserDetached
from app.core.deps import LimiterDep, SettingsDep
from app.tools.service import LazySandbox


async def get_sandbox(request: Request) -> LazySandbox:
    sandbox: LazySandbox = request.app.state.tool_sandbox
    return sandbox


SandboxDep = Annotated[LazySandbox, Depends(get_sandbox)]


async def tool_rate_limit(
    request: Request, user: CurrentUserDetached, limiter: LimiterDep, settings: SettingsDep
) -> None:
    """RATE_LIMIT_TOOLS per user (429 + Retry-After past it)."""
    await limiter.enforce(request, settings.rate_limit_tools, "tools", str(user.id))


ToolRateLimit = Annotated[None, Depends(tool_rate_limit)]
