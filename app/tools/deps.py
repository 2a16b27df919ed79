"""The tools feature's dependencies: the sandbox (started on first use), the per-user execution limit, and
for ``POST /mcp`` the MCP server and the Origin check."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request

from app.auth.deps import PerUserLimit
from app.core.deps import SettingsDep
from app.tools.mcp import McpServer, OriginRefused
from app.tools.service import LazySandbox

log = logging.getLogger("tradedesk.tools.mcp")


async def get_sandbox(request: Request) -> LazySandbox:
    sandbox: LazySandbox = request.app.state.tool_sandbox
    return sandbox


SandboxDep = Annotated[LazySandbox, Depends(get_sandbox)]


ToolRateLimit = Annotated[None, Depends(PerUserLimit("rate_limit_tools", name="tools"))]


async def get_mcp_server(request: Request) -> McpServer:
    server: McpServer = request.app.state.mcp
    return server


McpServerDep = Annotated[McpServer, Depends(get_mcp_server)]


async def check_mcp_origin(request: Request, settings: SettingsDep) -> None:
    """No ``Origin`` (a native client), or one of FRONTEND_URL's origins; else 403. The MCP transport
    spec asks for this against DNS rebinding: a page on another site must not drive the endpoint."""
    refused = [o for o in request.headers.getlist("origin") if o not in settings.frontend_origins]
    if refused:
        log.warning("MCP request from a refused origin", extra={"origin": refused[0][:200]})
        raise OriginRefused(
            f"Origin {refused[0][:200]!r} may not call /mcp; only FRONTEND_URL's origins may."
        )


McpOriginCheck = Annotated[None, Depends(check_mcp_origin)]
