"""Property: no query string sent to a billing route answers 5xx — every answer is 2xx JSON or a 4xx
problem+json (422s naming the field).

How hypothesis meets the async app: the test is an ``async def`` under ``@given``. pytest-asyncio
(auto mode, session-scoped loop) recognises a hypothesis test and replaces hypothesis' *inner* test
with a synchronous wrapper that runs each example's coroutine to completion on the session loop's
runner. So hypothesis stays in charge of generating, shrinking and replaying examples (one after
the other, never concurrently), while every HTTP call runs on the same loop as the app's lifespan,
its pool and the httpx client that the fixture built — no second loop, no thread, no nested
``run_until_complete``. The fixture (one app, one logged-in user with payments and a real cursor) is
built once per test and shared by all examples, which is what ``function_scoped_fixture`` warns about;
that is intended here: every example is a read-only GET, so none can leave state for the next one.
The default rate limit is raised so that hundreds of examples are not answered 429.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.billing import stripe_fake as sf

PAYMENTS = "/v1/billing/payments"
SUBSCRIPTION = "/v1/billing/subscription"

pytestmark = pytest.mark.slow

# Anything a client can put in a query value: any code point that UTF-8 can carry (lone surrogates
# cannot be sent at all), of any length around the 200-character cap.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=260)
NUMBERISH = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        ["", " ", "0", "1", "100", "101", "-1", "1e2", "0x10", "１", "NaN", "null", "true", "[]"]
    ),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Cursors shaped like the ones the server issued before it signed them (base64 of
# "<isoformat>|<uuid>"), with any instant and UTC offset a forger may choose — the edges of the calendar
# in particular, where a timestamp and its offset together fall outside it.
def _old_format(when: dt.datetime, offset: dt.timedelta, pid: uuid.UUID) -> str:
    return _b64(f"{when.replace(tzinfo=dt.timezone(offset)).isoformat()}|{pid}".encode())


OLD_FORMAT = st.builds(
    _old_format,
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.timedeltas(
        min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
    ),
    st.uuids(),
)
OLD_FORMAT_EDGES = st.builds(
    _old_format,
    st.sampled_from(
        [dt.datetime.min, dt.datetime(1, 1, 1, 13, 59), dt.datetime.max, dt.datetime(9999, 12, 31, 10)]
    ),
    st.sampled_from([dt.timedelta(hours=14), -dt.timedelta(hours=14), dt.timedelta(0)]),
    st.uuids(),
)
BASE64_OF_ANYTHING = st.binary(max_size=120).map(_b64)
VALUES = st.one_of(TEXT, NUMBERISH, BASE64_OF_ANYTHING)
CURSORS = st.one_of(VALUES, OLD_FORMAT, OLD_FORMAT_EDGES)


def _mutations(real: str) -> st.SearchStrategy[str]:
    """A real cursor with one character changed, cut, extended or spliced with another value."""
    i = st.integers(min_value=0, max_value=len(real) - 1)
    return st.one_of(
        st.tuples(i, st.characters(blacklist_categories=("Cs",))).map(
            lambda t: real[: t[0]] + t[1] + real[t[0] + 1 :]
        ),
        i.map(lambda k: real[:k]),
        i.map(lambda k: real[k:]),
        TEXT.map(lambda extra: real + extra),
        st.tuples(i, BASE64_OF_ANYTHING).map(lambda t: real[: t[0]] + t[1]),
    )


def _raw_query(pairs: list[tuple[bytes, bytes]]) -> str:
    """A query string from raw bytes: percent-escapes that need not be UTF-8 (``%ff``), repeated keys."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


RAW_PAIRS = st.lists(
    st.tuples(st.sampled_from([b"limit", b"cursor", b"x"]) | st.binary(max_size=8), st.binary(max_size=40)),
    max_size=4,
)


@pytest.fixture
async def caller(make_client) -> tuple[httpx.AsyncClient, dict[str, str], str]:
    """A logged-in user with three payments, and the real next_cursor of their first page."""
    client = await make_client(rate_limit_default="100000/minute")
    email, password = f"prop-{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple"
    r = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    token = (await client.post("/v1/auth/login", json={"email": email, "password": password})).json()[
        "access_token"
    ]
    auth = {"Authorization": f"Bearer {token}"}
    now = int(time.time())
    for evt in (
        sf.checkout_completed("cus_prop", r.json()["id"], created=now - 100),
        *(sf.invoice_paid("cus_prop", f"in_prop_{i}", 100 + i, created=now - 50 + i) for i in range(3)),
    ):
        body, headers = sf.signed(evt)
        assert (await client.post("/v1/webhooks/stripe", content=body, headers=headers)).status_code == 200
    page = (await client.get(PAYMENTS, params={"limit": 1}, headers=auth)).json()
    assert page["next_cursor"], page
    return client, auth, page["next_cursor"]


def _check(r: httpx.Response, where: object) -> None:
    assert r.status_code < 500, (where, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), (where, r.headers)
        body = r.json()
        assert body["status"] == r.status_code
        if r.status_code == 422:
            fields = [e["field"] for e in body["errors"]]
            assert fields and all(f.startswith("query.") for f in fields), (where, body)
    else:
        assert r.headers["content-type"].startswith("application/json"), (where, r.headers)
        r.json()


BOUNDED = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@BOUNDED
@given(data=st.data(), limit=st.none() | st.integers(min_value=1, max_value=100).map(str) | VALUES)
async def test_payments_query_never_5xx(caller, data: st.DataObject, limit: str | None) -> None:
    client, auth, real = caller
    cursor = data.draw(st.none() | CURSORS | _mutations(real), label="cursor")
    params = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
    _check(await client.get(PAYMENTS, params=params, headers=auth), params)


@BOUNDED
@given(pairs=RAW_PAIRS)
async def test_raw_query_strings_never_5xx(caller, pairs: list[tuple[bytes, bytes]]) -> None:
    client, auth, _ = caller
    query = _raw_query(pairs)
    for path in (PAYMENTS, SUBSCRIPTION):
        _check(await client.get(f"{path}?{query}", headers=auth), (path, query))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "cursor", "status", "x"]) | TEXT.filter(bool), CURSORS, max_size=3
    )
)
async def test_subscription_query_never_5xx(caller, params: dict[str, str]) -> None:
    client, auth, _ = caller
    r = await client.get(SUBSCRIPTION, params=params, headers=auth)
    _check(r, params)
    assert r.status_code == 200 and r.json()["status"] == "active"
