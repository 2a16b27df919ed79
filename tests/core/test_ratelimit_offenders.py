"""One client repeatedly refused by a limit: ``rate_limit_offenders_total{limit}`` and one warning naming the
key, exactly once per key and window — across processes sharing Redis and when many 429s race across the
threshold; counted on the refusal path only, never naming a raw email."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from app.core.ratelimit import KNOWN_LIMITS, OffenderCounts, pseudonym
from tests.auth.helpers import login, peer
from tests.support.metrics import grew, scrape
from tests.support.routes import router as support_router

ROOT = Path(__file__).resolve().parents[2]
OFFENDER_KEYS = "tradedesk-rl:offender:*"


class Records(logging.Handler):
    """The records of one logger, as emitted (the app's logging setup replaces the root's handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def offenders(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == "rate limit offender"]


@pytest.fixture
def ratelimit_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("tradedesk.ratelimit")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _items(client: httpx.AsyncClient) -> object:
    return client.post("/v1/_test/items", json={"name": "a", "qty": 1})


async def test_the_refusal_that_reaches_the_threshold_counts_one_offender(make_client, ratelimit_log) -> None:
    client = await make_client(
        routers=[support_router],
        client_ip="198.51.100.23",
        rate_limit_default="1/minute",
        rate_limit_offender_threshold=3,
    )
    before = await scrape(client)
    statuses = [(await _items(client)).status_code for _ in range(3)]  # one allowed, two refused
    assert statuses == [200, 429, 429]
    assert grew(before, await scrape(client), "rate_limit_offenders_total", limit="default") == 0
    assert ratelimit_log.offenders() == []

    statuses = [(await _items(client)).status_code for _ in range(10)]  # the third refusal and beyond
    assert statuses == [429] * 10
    assert grew(before, await scrape(client), "rate_limit_offenders_total", limit="default") == 1
    [record] = ratelimit_log.offenders()
    assert record.levelno == logging.WARNING
    assert record.limit == "default"  # type: ignore[attr-defined]
    assert record.key == "198.51.100.23"  # type: ignore[attr-defined]
    assert record.refusals == 3  # type: ignore[attr-defined]
    assert record.route == "/v1/_test/items"  # type: ignore[attr-defined]

    # Another client is its own key: its own count, its own offender.
    async with peer(client, "198.51.100.24") as other:
        assert [(await _items(other)).status_code for _ in range(4)] == [200, 429, 429, 429]
    assert grew(before, await scrape(client), "rate_limit_offenders_total", limit="default") == 2
    assert [r.key for r in ratelimit_log.offenders()] == ["198.51.100.23", "198.51.100.24"]  # type: ignore[attr-defined]


@pytest.mark.redis
async def test_two_app_instances_sharing_redis_count_toward_one_offender(
    make_client, require_redis: str, ratelimit_log
) -> None:
    settings = dict(
        routers=[support_router],
        use_redis=True,
        client_ip="203.0.113.5",
        rate_limit_default="1/minute",
        rate_limit_offender_threshold=4,
    )
    one = await make_client(**settings)
    two = await make_client(**settings)
    before = await scrape(one)
    assert (await _items(one)).status_code == 200
    # Two refusals in each instance: neither reaches 4 on its own, together they do (on the last one).
    for client in (one, two, one):
        assert (await _items(client)).status_code == 429
    assert grew(before, await scrape(one), "rate_limit_offenders_total", limit="default") == 0
    assert (await _items(two)).status_code == 429
    assert grew(before, await scrape(two), "rate_limit_offenders_total", limit="default") == 1
    assert [r.key for r in ratelimit_log.offenders()] == ["203.0.113.5"]  # type: ignore[attr-defined]

    redis = aioredis.from_url(require_redis)
    try:
        [key] = [k async for k in redis.scan_iter(OFFENDER_KEYS)]
        assert key == b"tradedesk-rl:offender:default:203.0.113.5"
        assert int(await redis.get(key)) == 4
        assert 0 < await redis.pttl(key) <= 300_000  # the window expires with the key
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_many_refusals_racing_across_the_threshold_count_exactly_once(
    make_client, require_redis: str, ratelimit_log
) -> None:
    settings = dict(
        routers=[support_router],
        use_redis=True,
        client_ip="203.0.113.77",
        rate_limit_default="1/minute",
        rate_limit_offender_threshold=10,
    )
    one = await make_client(**settings)
    two = await make_client(**settings)
    # Open each instance's Redis connections first (other clients, one request each): many connections
    # being opened at once on a busy test host can take longer than the limiter's 0.25 s timeout, and
    # a timed-out check fails open (200) — the limiter's documented behaviour, not what is tested here.
    peers = [peer(app, f"198.18.0.{i}") for i, app in enumerate([one, two] * 30)]
    await asyncio.gather(*(_items(p) for p in peers))
    for p in peers:
        await p.aclose()
    before = await scrape(one)
    assert (await _items(one)).status_code == 200
    responses = await asyncio.gather(*(_items(one if i % 2 else two) for i in range(40)))
    after = await scrape(one)
    failed_open = grew(before, after, "rate_limit_storage_errors_total", limit="default")
    assert [r.status_code for r in responses] == [429] * 40, f"storage errors meanwhile: {failed_open}"
    assert grew(before, after, "rate_limit_offenders_total", limit="default") == 1
    assert len(ratelimit_log.offenders()) == 1
    redis = aioredis.from_url(require_redis)
    try:
        assert int(await redis.get("tradedesk-rl:offender:default:203.0.113.77")) == 40
    finally:
        await redis.aclose()


@pytest.mark.redis
async def test_allowed_requests_leave_no_offender_state(make_client, require_redis: str) -> None:
    client = await make_client(routers=[support_router], use_redis=True, rate_limit_default="50/minute")
    assert [(await _items(client)).status_code for _ in range(20)] == [200] * 20
    redis = aioredis.from_url(require_redis)
    try:
        assert [k async for k in redis.scan_iter(OFFENDER_KEYS)] == []
    finally:
        await redis.aclose()


async def test_an_email_offender_is_named_by_its_pseudonym_never_the_address(
    make_client, ratelimit_log
) -> None:
    client = await make_client(rate_limit_login="2/minute", rate_limit_offender_threshold=3)
    email = "Offender.Person@example.com"
    before = await scrape(client)
    statuses = []
    for i in range(5):  # a new address each time: only the per-email limit refuses
        async with peer(client, f"192.0.2.{100 + i}") as attacker:
            statuses.append((await login(attacker, email, "wrong password")).status_code)
    assert statuses == [401, 401, 429, 429, 429]
    assert grew(before, await scrape(client), "rate_limit_offenders_total", limit="login-email") == 1
    [record] = ratelimit_log.offenders()
    settings = client.app.state.settings  # type: ignore[attr-defined]
    assert record.key == pseudonym("offender.person@example.com", key=settings.pseudonym_key)  # type: ignore[attr-defined]
    for r in ratelimit_log.records:
        text = f"{r.getMessage()} {r.__dict__}".lower()
        assert "offender.person" not in text and "example.com" not in text


def test_memory_counts_start_a_new_window_when_the_last_ended_and_stay_bounded() -> None:
    counts = OffenderCounts(capacity=2)
    assert [counts.count("a", 300) for _ in range(3)] == [1, 2, 3]
    assert counts.count("a", 0.0) == 4  # still inside the window "a" opened
    expired = OffenderCounts()
    assert [expired.count("a", 0.0) for _ in range(3)] == [1, 1, 1]  # every window already over
    counts.count("b", 300)
    counts.count("c", 300)  # a third key: the oldest window ("a") is forgotten
    assert counts.count("a", 300) == 1
    assert counts.count("c", 300) == 2


def test_every_limit_the_app_enforces_has_its_offender_series_from_startup() -> None:
    """A limit name missing from KNOWN_LIMITS would only get its offender series at its first offender,
    which `increase()` cannot see: the alert would miss it."""
    import re

    names = set()
    for path in (ROOT / "app").rglob("*.py"):
        text = path.read_text()
        names.update(re.findall(r"\.enforce\(\s*request,\s*[^,]+,\s*\"([a-z0-9-]+)\"", text))
        names.update(re.findall(r"RateLimit\(\s*\"[a-z_]+\",\s*name=\"([a-z0-9-]+)\"", text))
    assert {"default", "orders", "login-email"} <= names  # the scan finds the calls
    assert names <= set(KNOWN_LIMITS), names - set(KNOWN_LIMITS)
