"""The alert process tests' fake Discord and helpers: a user with a webhook set over HTTP, alerts enqueued
over HTTP in the user's order, the queue read from PostgreSQL, and the check that every alert was delivered
exactly once, in each user's order (tests/alerts/test_processes.py, tests/core/test_two_instances.py)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.auth.helpers import bearer, fetch, signup_and_token
from tests.outbound.fake_provider import Hang, Recorded, Reply
from tests.support.fake_discord import FakeDiscord, PostedMessage
from tests.support.servers import Server, eventually

SETTLE_SECONDS = 20.0
ELSEWHERE = "elsewhere"  # content of the messages the test itself posts to use a bucket up


# ---------------------------------------------------------------------------------- the fake Discord
@dataclass
class HoldingDiscord(FakeDiscord):
    """The fake Discord, plus one knob: ``hold(webhook_id)`` makes the next request to that webhook that
    Discord accepts post its message (recorded, counted in the bucket) and then never answer — the
    "Discord accepted it, the answer is still on its way" moment of the documented window."""

    holding: dict[str, int] = field(default_factory=dict)
    held: list[PostedMessage] = field(default_factory=list)
    slow: dict[str, float] = field(default_factory=dict)  # content -> seconds before the answer
    answer_due: dict[str, float] = field(default_factory=dict)  # content -> monotonic time of the answer

    def hold(self, webhook_id: str, times: int = 1) -> HoldingDiscord:
        self.holding[webhook_id] = times
        return self

    def delay_answer(self, content: str, seconds: float) -> HoldingDiscord:
        """Post the message with this content at once, and answer it ``seconds`` later."""
        self.slow[content] = seconds
        return self

    def _handle(self, request: Recorded) -> Reply | Hang:  # type: ignore[override]
        before = len(self.posted)
        reply = super()._handle(request)
        if reply.status != 200 or len(self.posted) == before:
            return reply
        message = self.posted[-1]
        if self.holding.get(message.webhook_id, 0) > 0:
            self.holding[message.webhook_id] -= 1
            self.held.append(message)
            return Hang()
        if message.content in self.slow:
            reply.delay = self.slow.pop(message.content)
            self.answer_due[message.content] = message.arrived + reply.delay
        return reply

    def contents(self, webhook_id: str) -> list[Any]:
        """What the app delivered to this webhook, in arrival order (the test's own posts left out)."""
        return [m.content for m in self.messages(webhook_id) if not str(m.content).startswith(ELSEWHERE)]

    def delivered(self) -> list[PostedMessage]:
        return [m for m in self.posted if not str(m.content).startswith(ELSEWHERE)]

    def summary(self) -> str:
        per = Counter(m.webhook_id for m in self.delivered())
        return (
            f"fake discord: {len(self.delivered())} app messages {dict(per)}, "
            f"429s {Counter(t.webhook_id for t in self.throttled)}, held {[m.content for m in self.held]}"
        )


# ---------------------------------------------------------------------------------- helpers
@dataclass
class Subscriber:
    user_id: uuid.UUID
    auth: dict[str, str]
    webhook_id: str
    token: str
    expected: list[str] = field(default_factory=list)  # contents in enqueue order


async def subscriber(server: Server, webhook_id: str) -> Subscriber:
    """A user signed up and logged in over HTTP, with a Discord webhook set over HTTP."""
    user, token = await signup_and_token(server.http)
    auth = bearer(token)
    sub = Subscriber(uuid.UUID(user["id"]), auth, webhook_id, f"tok-{webhook_id}")
    r = await server.http.put(
        "/v1/alerts/discord/webhook",
        json={"webhook_id": webhook_id, "webhook_token": sub.token},
        headers=auth,
    )
    assert r.status_code == 204, r.text
    return sub


async def enqueue(via: Sequence[Server], sub: Subscriber, contents: Sequence[str]) -> None:
    """POST the alerts one after another (so their order is the user's order), the n-th through
    ``via[n % len(via)]``; each must be queued (202, ``status: queued``)."""
    for n, content in enumerate(contents):
        r = await via[n % len(via)].http.post(
            "/v1/alerts/discord", json={"content": content}, headers=sub.auth
        )
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued", r.json()
        sub.expected.append(content)


async def use_bucket_up(discord: HoldingDiscord, sub: Subscriber) -> None:
    """Another sender uses the webhook's whole bucket: the app's next request to it is answered 429."""
    url = f"{discord.base_url}/webhooks/{sub.webhook_id}/{sub.token}"
    async with httpx.AsyncClient(timeout=5) as client:
        for k in range(discord.limit):
            r = await client.post(url, params={"wait": "true"}, json={"content": f"{ELSEWHERE} {k}"})
            assert r.status_code == 200, r.text


async def statuses(database_url: str) -> Counter[str]:
    rows = await fetch(database_url, "SELECT status, count(*) AS n FROM alerts GROUP BY status")
    return Counter({r["status"]: r["n"] for r in rows})


async def all_ended(database_url: str, total: int) -> Counter[str]:
    """Wait until every one of ``total`` alerts is ``sent`` or ``failed``; the status counts."""

    async def probe() -> Counter[str] | None:
        counts = await statuses(database_url)
        return counts if counts["sent"] + counts["failed"] >= total else None

    try:
        return await eventually(probe, within=SETTLE_SECONDS, what=f"all {total} alerts ended")
    except AssertionError as exc:
        exc.add_note(f"alert statuses: {dict(await statuses(database_url))}")
        raise


async def quiet_moment(database_url: str) -> Any:
    """The queue when no alert is being sent and every webhook with alerts pending is blocked (its
    bucket, or a 429) for at least 0.3 s more: until then no dispatcher can claim anything, so no
    message can be in flight."""
    (row,) = await fetch(
        database_url,
        """
        SELECT count(*) FILTER (WHERE a.status = 'sending') AS sending,
               count(*) FILTER (WHERE a.status = 'sent') AS sent,
               count(*) FILTER (WHERE a.status = 'queued') AS queued,
               coalesce(bool_and(coalesce(w.blocked_until > now() + interval '0.3 seconds', false))
                        FILTER (WHERE a.status IN ('queued', 'sending')), false) AS all_blocked
        FROM alerts a JOIN discord_webhooks w ON w.user_id = a.user_id
        """,
    )
    return row


async def assert_each_delivered_once_in_order(
    database_url: str, discord: HoldingDiscord, subs: Sequence[Subscriber]
) -> None:
    """Every alert row ``sent``, with the id of the one message the fake holds for it; each webhook got
    exactly its user's contents, once each, in enqueue order; every payload had no mentions."""
    total = sum(len(s.expected) for s in subs)
    rows = await fetch(
        database_url, "SELECT user_id, content, status, discord_message_id FROM alerts ORDER BY seq"
    )
    assert len(rows) == total, [dict(r) for r in rows]
    assert Counter(r["status"] for r in rows) == {"sent": total}, Counter(r["status"] for r in rows)
    for sub in subs:
        got = discord.contents(sub.webhook_id)
        duplicates = sorted(c for c, n in Counter(got).items() if n > 1)
        assert not duplicates, f"{sub.webhook_id}: delivered more than once: {duplicates}"
        missing = sorted(set(sub.expected) - set(got))
        assert not missing, f"{sub.webhook_id}: never delivered: {missing}"
        assert got == sub.expected, f"{sub.webhook_id}: out of the user's order: {got}"
        messages = [m for m in discord.messages(sub.webhook_id) if m.content in sub.expected]
        assert all(m.allowed_mentions == {"parse": []} for m in messages)
        mine = [r for r in rows if r["user_id"] == sub.user_id]
        assert [r["content"] for r in mine] == sub.expected
        assert [r["discord_message_id"] for r in mine] == [m.message_id for m in messages]
    assert len(discord.delivered()) == total


def contents_for(user: int, count: int) -> list[str]:
    return [f"user {user} alert {n:02d}" for n in range(count)]
