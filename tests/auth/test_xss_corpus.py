"""The XSS corpus (tests/auth/data/xss_vectors.json, >= 150 vectors) through display_name and bio
over HTTP — signup and PATCH /me — checking the stored row and the returned values with an HTML5
parser (html5lib): no dangerous element, no on* attribute, no URL outside http/https/mailto, and no
element at all in display_name. A vector refused with 422 must name the field and store nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.auth.helpers import bearer, fetch, signup, signup_and_token, unique_email, user_row
from tests.auth.htmlcheck import problems

CORPUS = json.loads((Path(__file__).parent / "data" / "xss_vectors.json").read_text(encoding="utf-8"))[
    "vectors"
]
REQUIRED_CATEGORIES = {
    "script-tag",
    "event-handler",
    "javascript-url",
    "data-url",
    "vbscript-and-other-schemes",
    "svg",
    "mathml",
    "base",
    "meta",
    "form",
    "css",
    "unclosed-nested-malformed",
    "mutation-xss",
    "null-and-unicode",
    "entity-encoded-markup",
}


def test_corpus_is_big_and_covers_every_family() -> None:
    assert len(CORPUS) >= 150
    assert len({v["vector"] for v in CORPUS}) == len(CORPUS), "duplicate vectors"
    assert REQUIRED_CATEGORIES <= {v["category"] for v in CORPUS}


def _check(label: str, value: str | None, *, plain: bool) -> list[str]:
    if value is None:
        return []
    return [f"{label}: {p} in {value!r}" for p in problems(value, plain=plain)]


@pytest.fixture
async def xss_client(make_client) -> httpx.AsyncClient:
    # Hundreds of requests from one test client: lift only the generic per-IP limit for this test.
    return await make_client(
        rate_limit_default="100000/minute", rate_limit_signup="100000/minute"
    )  # 264 signups


async def test_corpus_through_signup_display_name(xss_client: httpx.AsyncClient, database_url: str) -> None:
    failures: list[str] = []
    accepted = 0

    async def one(vector: str) -> None:
        nonlocal accepted
        email = unique_email("xss")
        r = await signup(xss_client, email, display_name=vector)
        if r.status_code == 422:
            fields = {e["field"] for e in r.json()["errors"]}
            if fields != {"display_name"}:
                failures.append(f"{vector!r}: 422 naming {fields}")
            rows = await fetch(database_url, "SELECT 1 FROM users WHERE email = $1", email)
            if rows:
                failures.append(f"{vector!r}: refused but stored")
            return
        if r.status_code != 201:
            failures.append(f"{vector!r}: status {r.status_code} {r.text[:200]}")
            return
        accepted += 1
        returned = r.json()["display_name"]
        stored = (await user_row(database_url, r.json()["id"]))["display_name"]
        if stored != returned:
            failures.append(f"{vector!r}: stored {stored!r} but returned {returned!r}")
        failures.extend(_check(f"{vector!r} returned", returned, plain=True))
        failures.extend(_check(f"{vector!r} stored", stored, plain=True))

    vectors = [v["vector"] for v in CORPUS]
    for start in range(0, len(vectors), 16):  # a few at a time: each signup is one Argon2 hash
        await asyncio.gather(*(one(v) for v in vectors[start : start + 16]))
    assert not failures, "\n".join(failures)
    assert accepted >= len(vectors) * 0.8, "most vectors should be cleaned, not refused"


async def test_corpus_through_patch_display_name_and_bio(
    xss_client: httpx.AsyncClient, database_url: str
) -> None:
    user, token = await signup_and_token(xss_client)
    auth = bearer(token)
    failures: list[str] = []
    accepted = 0
    for entry in CORPUS:
        vector = entry["vector"]
        before = await user_row(database_url, user["id"])
        r = await xss_client.patch("/v1/auth/me", headers=auth, json={"display_name": vector, "bio": vector})
        after = await user_row(database_url, user["id"])
        if r.status_code == 422:
            fields = {e["field"] for e in r.json()["errors"]}
            if not fields or not fields <= {"display_name", "bio"}:
                failures.append(f"{vector!r}: 422 naming {fields}")
            if dict(after) != dict(before):
                failures.append(f"{vector!r}: refused but the row changed")
            continue
        if r.status_code != 200:
            failures.append(f"{vector!r}: status {r.status_code} {r.text[:200]}")
            continue
        accepted += 1
        body = r.json()
        me = (await xss_client.get("/v1/auth/me", headers=auth)).json()
        for field, plain in (("display_name", True), ("bio", False)):
            if not (after[field] == body[field] == me[field]):
                failures.append(
                    f"{vector!r}: {field} stored {after[field]!r}, PATCH returned {body[field]!r}, "
                    f"GET returned {me[field]!r}"
                )
            failures.extend(_check(f"{vector!r} {field} returned", body[field], plain=plain))
            failures.extend(_check(f"{vector!r} {field} stored", after[field], plain=plain))
    assert not failures, "\n".join(failures)
    assert accepted >= len(CORPUS) * 0.8, "most vectors should be cleaned, not refused"
