"""Test-only routes that exercise the shared machinery (session, errors, limits) with real SQL."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import text

from app.core.deps import SessionDep
from app.core.ratelimit import default_rate_limit

router = APIRouter(prefix="/v1/_test", dependencies=[Depends(default_rate_limit)])


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=10)
    qty: int = Field(gt=0)


@router.get("/db-sleep")
async def db_sleep(session: SessionDep, seconds: float = 0.2) -> dict[str, str]:
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return {"status": "ok"}


@router.post("/items")
async def create_item(item: Item) -> dict[str, object]:
    return {"name": item.name, "qty": item.qty}


@router.post("/echo-size")
async def echo_size(payload: dict[str, object]) -> dict[str, int]:
    return {"keys": len(payload)}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internals: SELECT * FROM users WHERE password = 'x'")


@router.post("/write-then-fail")
async def write_then_fail(session: SessionDep) -> None:
    await session.execute(
        text("INSERT INTO users (email, email_normalized, password_hash) VALUES ('a@x.io','a@x.io','h')")
    )
    raise RuntimeError("fail after write")


@router.post("/write")
async def write(session: SessionDep) -> dict[str, str]:
    await session.execute(
        text("INSERT INTO users (email, email_normalized, password_hash) VALUES ('b@x.io','b@x.io','h')")
    )
    return {"status": "written"}


@router.get("/db-error")
async def db_error(session: SessionDep, value: str) -> None:
    await session.execute(text("SELECT CAST(:v AS integer)"), {"v": value})


def app_with_test_routes() -> FastAPI:
    """``app.main``'s app with these routes, for a real server process (``Servers.start(factory=…)``)."""
    from app.main import create_app

    app = create_app()
    app.include_router(router)
    return app
