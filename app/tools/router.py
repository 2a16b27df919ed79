"""GET /v1/tools and POST /v1/tools/{name}/execute (contract §4, Tools)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from app.auth.deps import CurrentUserDetached
from app.core.deps import DatabaseDep, SettingsDep
from app.market.deps import MarketDataDep
from app.tools import registry, service
from app.tools.deps import SandboxDep, ToolRateLimit

router = APIRouter(tags=["tools"])
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any] = Field(description="JSON Schema, accepted by strict function calling")


class ExecuteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arguments: Any = Field(description="The tool's arguments: an object matching its `parameters`")


class ExecuteOut(BaseModel):
    result: Any


@router.get("/tools", response_model=list[ToolOut], summary="The tools and their argument schemas")
async def list_tools() -> list[dict[str, Any]]:
    return registry.published_tools()


@router.post(
    "/tools/{name}/execute",
    response_model=ExecuteOut,
    responses={
        404: {"description": "No tool of that name.", **_PROBLEM},
        422: {
            "description": "Arguments that break the schema (`errors[].field`: arguments.<path>).",
            **_PROBLEM,
        },
        429: {"description": "RATE_LIMIT_TOOLS exceeded for this user.", **_PROBLEM},
        502: {"description": "The tool's worker process died (it was replaced).", **_PROBLEM},
        503: {"description": "Every worker is busy; retry after Retry-After.", **_PROBLEM},
        504: {"description": "The tool ran past TOOL_TIMEOUT_SECONDS (its worker was killed).", **_PROBLEM},
    },
    summary="Run a tool",
)
async def execute(
    name: Annotated[str, Path(max_length=200)],
    body: ExecuteIn,
    user: CurrentUserDetached,
    _limit: ToolRateLimit,
    sandbox: SandboxDep,
    market: MarketDataDep,
    database: DatabaseDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    return await service.execute(
        database=database,
        sandbox=sandbox,
        market=market,
        name=name,
        raw_arguments=body.arguments,
        user_id=user.id,
        timeout=settings.tool_timeout_seconds,
    )
