"""Operations' dependency: the readiness probe built once in the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.ops.readiness import ReadinessProbe


async def get_readiness(request: Request) -> ReadinessProbe:
    readiness: ReadinessProbe = request.app.state.readiness
    return readiness


ReadinessDep = Annotated[ReadinessProbe, Depends(get_readiness)]
