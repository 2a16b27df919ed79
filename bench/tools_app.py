"""The app of ``bench_tools``' timeout part: the real app (``app.main.create_app``) plus one bench-only
tool, ``bench_loop``, whose function never returns, so every call ends in a 504 at TOOL_TIMEOUT_SECONDS.

Served as ``uvicorn bench.tools_app:create_app --factory``. The tool is registered through the public
``registry.register`` when this module is imported, before the app's lifespan builds the sandbox's
allow-list from the registry (``app.tools.service.allowed_functions``). Its function lives in this
module, which imports nothing at the top but the registry pieces, because the spawned sandbox worker
imports it (the worker inherits ``sys.path``, whose first entry is the repository root uvicorn runs in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.tools import registry
from app.tools.schemas import ToolArgs

if TYPE_CHECKING:
    from fastapi import FastAPI

LOOP_TOOL = "bench_loop"


class NoArgs(ToolArgs):
    """No arguments."""


def loop_forever(payload: dict[str, Any]) -> None:
    """Spin on the CPU until the sandbox kills the worker (wall clock, or RLIMIT_CPU)."""
    while True:
        pass


registry.register(
    registry.Tool(
        name=LOOP_TOOL,
        description="bench only: spins until the sandbox's wall-clock limit kills it",
        args_model=NoArgs,
        function=f"{__name__}:loop_forever",
    ),
    replace=True,
)


def create_app() -> FastAPI:
    from app.main import create_app as create_real_app

    return create_real_app(freeze_gc=True)  # as the server entry point app.main:app builds it
