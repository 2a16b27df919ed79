"""A loopback HTTP/1.1 server that plays an external provider, so our real client, retry, timeout,
breaker and parsing code runs against real sockets.

Each request is matched against the rules registered with ``on(path_regex, *behaviours)`` (newest rule
first); a rule's behaviours are used in turn, the last one repeating. A behaviour is a ``Reply``, ``Hang``,
``Drip``, ``Close`` or a callable taking the ``Recorded`` request and returning one of them. Every request
is recorded (method, path, query, headers) so tests can count what the provider really saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes | None = None


@dataclass
class Hang:
    """Accept the request and never answer."""


@dataclass
class Drip:
    """Send the headers, then one byte every ``interval`` seconds of a ``size``-byte body."""

    interval: float = 0.2
    size: int = 100


@dataclass
class Close:
    """Close the connection without answering."""


Behaviour = Reply | Hang | Drip | Close | Callable[[Recorded], Any]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class FakeProvider:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._rules: list[tuple[re.Pattern[str], list[Behaviour]]] = []
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeProvider:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def on(self, pattern: str, *behaviours: Behaviour) -> FakeProvider:
        self._rules.insert(0, (re.compile(pattern), list(behaviours)))
        return self

    def reset(self) -> FakeProvider:
        """Forget every rule and every recorded request: a fake shared by several tests starts afresh."""
        self._rules.clear()
        self.requests.clear()
        return self

    def count(self, pattern: str = ".*") -> int:
        regex = re.compile(pattern)
        return sum(1 for r in self.requests if regex.fullmatch(r.path))

    def seen(self, pattern: str = ".*") -> list[Recorded]:
        regex = re.compile(pattern)
        return [r for r in self.requests if regex.fullmatch(r.path)]

    # ------------------------------------------------------------------ server
    def _behaviour_for(self, request: Recorded) -> Behaviour:
        for regex, behaviours in self._rules:
            if regex.fullmatch(request.path):
                behaviour = behaviours.pop(0) if len(behaviours) > 1 else behaviours[0]
                return behaviour
        return Reply(404, {"message": "no such route in the fake"})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = b""
                if headers.get("content-length"):
                    body = await reader.readexactly(int(headers["content-length"]))
                parts = urlsplit(target)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                request = Recorded(method, parts.path, query, headers, body)
                self.requests.append(request)
                behaviour = self._behaviour_for(request)
                if callable(behaviour) and not isinstance(behaviour, (Reply, Hang, Drip, Close)):
                    behaviour = behaviour(request)
                if isinstance(behaviour, Hang):
                    await asyncio.Event().wait()
                if isinstance(behaviour, Close):
                    return
                if isinstance(behaviour, Drip):
                    writer.write(
                        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {behaviour.size}"
                        "\r\n\r\n".encode()
                    )
                    await writer.drain()
                    for _ in range(behaviour.size):
                        await asyncio.sleep(behaviour.interval)
                        writer.write(b" ")
                        await writer.drain()
                    continue
                assert isinstance(behaviour, Reply)
                if behaviour.delay:
                    await asyncio.sleep(behaviour.delay)
                payload = (
                    behaviour.body if behaviour.body is not None else json.dumps(behaviour.json).encode()
                )
                reason = _REASONS.get(behaviour.status, "Status")
                extra = "".join(f"{k}: {v}\r\n" for k, v in behaviour.headers.items())
                writer.write(
                    f"HTTP/1.1 {behaviour.status} {reason}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n{extra}\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()


# ---------------------------------------------------------------------- Alpaca Market Data v2 shapes
SNAPSHOT_PATH = r"/v2/stocks/([A-Z0-9.]+)/snapshot"
BARS_PATH = r"/v2/stocks/([A-Z0-9.]+)/bars"

# Alpaca Market Data v2 ``GET /v2/stocks/{symbol}/snapshot`` (single symbol): the symbol at the top level
# next to latestTrade, latestQuote, minuteBar, dailyBar, prevDailyBar (each may be null).
LATEST_QUOTE = {
    "t": "2024-01-02T15:30:00.123456789Z",
    "ax": "V",
    "ap": 190.05,
    "as": 3,
    "bx": "V",
    "bp": 189.95,
    "bs": 2,
    "c": ["R"],
    "z": "C",
}
LATEST_TRADE = {
    "t": "2024-01-02T15:29:59.5Z",
    "x": "V",
    "p": 190.01,
    "s": 100,
    "c": ["@"],
    "i": 52983525029461,
    "z": "C",
}


def symbol_of(request: Recorded) -> str:
    return request.path.split("/")[3]


def snapshot_body(
    symbol: str, *, quote: dict[str, Any] | None = LATEST_QUOTE, trade: dict[str, Any] | None = LATEST_TRADE
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "latestTrade": trade,
        "latestQuote": quote,
        "minuteBar": {
            "t": "2024-01-02T15:29:00Z",
            "o": 190.0,
            "h": 190.1,
            "l": 189.9,
            "c": 190.01,
            "v": 3746,
            "n": 57,
            "vw": 190.02,
        },
        "dailyBar": {
            "t": "2024-01-02T05:00:00Z",
            "o": 187.15,
            "h": 188.44,
            "l": 183.89,
            "c": 185.64,
            "v": 82488674,
            "n": 1009074,
            "vw": 185.9465,
        },
        "prevDailyBar": {
            "t": "2023-12-29T05:00:00Z",
            "o": 193.9,
            "h": 194.4,
            "l": 191.73,
            "c": 192.53,
            "v": 42628802,
            "n": 535962,
            "vw": 192.863,
        },
    }


def alpaca_snapshot(request: Recorded, **parts: Any) -> Reply:
    return Reply(json=snapshot_body(symbol_of(request), **parts))


def slow_snapshot(delay: float) -> Callable[[Recorded], Reply]:
    """A snapshot answered after ``delay`` seconds (keeps concurrent misses in flight together)."""
    return lambda request: Reply(json=snapshot_body(symbol_of(request)), delay=delay)


def alpaca_bars(page_size: int = 1000) -> Callable[[Recorded], Reply]:
    """Pages of ``page_size`` one-minute bars from ``start``, continuing at ``page_token`` (an index)."""

    def handler(request: Recorded) -> Reply:
        start = dt.datetime.fromisoformat(request.query["start"])
        limit = int(request.query.get("limit", 1000))
        offset = int(request.query.get("page_token", "0"))
        size = min(page_size, limit)
        bars = []
        for i in range(offset, offset + size):
            price = 100 + i / 100
            bars.append(
                {
                    "t": (start + dt.timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
                    "o": price,
                    "h": price + 0.5,
                    "l": price - 0.5,
                    "c": price + 0.25,
                    "v": 1000 + i,
                    "n": 10,
                    "vw": price,
                }
            )
        return Reply(json={"symbol": symbol_of(request), "bars": bars, "next_page_token": str(offset + size)})

    return handler


def serve_alpaca(fake: FakeProvider, *, page_size: int = 1000) -> FakeProvider:
    return fake.on(SNAPSHOT_PATH, alpaca_snapshot).on(BARS_PATH, alpaca_bars(page_size))
