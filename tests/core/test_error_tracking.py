"""Optional error tracking (SENTRY_DSN, app/core/errortracking.py).

A real server with SENTRY_DSN pointing at a loopback fake Sentry answers an unhandled 500 and a database
error; the fake receives the events (the SDK's own transport, real sockets) and their raw bytes hold
none of the request's credentials: bearer token, cookie, Stripe signature, OAuth code, the database
error's bound value. Without SENTRY_DSN nothing is initialised. ``scrub`` itself is checked on the
shapes the SDK produces (breadcrumbs with Discord webhook URLs, log-line extras, query strings).
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk

from app.core.config import ConfigurationError
from app.core.errortracking import FILTERED, init_error_tracking, scrub
from tests.outbound.fake_provider import FakeProvider, Recorded, Reply
from tests.support.cli import cli_env
from tests.support.servers import Servers, eventually
from tests.support.settings import make_settings

ENVELOPE = r"/api/\d+/envelope/"


def envelope_items(request: Recorded) -> list[dict[str, Any]]:
    """Every JSON object of one envelope (its header, item headers and payloads)."""
    body = request.body
    encoding = request.headers.get("content-encoding", "")
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    elif encoding:
        raise AssertionError(f"unexpected Content-Encoding {encoding!r}")
    items = []
    for line in body.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            items.append(value)
    return items


def raw_text(fake: FakeProvider) -> str:
    return "\n".join(json.dumps(item) for r in fake.seen(ENVELOPE) for item in envelope_items(r))


def events(fake: FakeProvider) -> list[dict[str, Any]]:
    return [
        item
        for r in fake.seen(ENVELOPE)
        for item in envelope_items(r)
        if "event_id" in item and ("exception" in item or "logentry" in item or "message" in item)
    ]


async def test_unhandled_500_reaches_sentry_without_credentials(database_url: str, tmp_path: Path) -> None:
    fake = await FakeProvider().on(ENVELOPE, Reply(200, json={})).start()
    dsn = f"http://publickey0123456789@{fake.url.removeprefix('http://')}/42"
    servers = Servers(cli_env(database_url, SENTRY_DSN=dsn), tmp_path)
    bearer = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtdXNlciJ9.c2lnbmF0dXJlLXNlY3JldA"
    cookie = f"session=cookie-{uuid.uuid4().hex}"
    signature = f"t=1,v1=sig{uuid.uuid4().hex}"
    code = f"oauth-code-{uuid.uuid4().hex}"
    bound = f"bound-value-{uuid.uuid4().hex}"
    try:
        with servers.diagnosed():
            server = await servers.start(factory="tests.support.routes:app_with_test_routes")
            r = await server.http.get(
                "/v1/_test/boom",
                params={"code": code, "symbol": "AAPL"},
                headers={
                    "Authorization": f"Bearer {bearer}",
                    "Cookie": cookie,
                    "Stripe-Signature": signature,
                },
            )
            assert r.status_code == 500
            assert r.headers["content-type"].startswith("application/problem+json")
            crashed = await eventually(
                lambda: [e for e in events(fake) if _exception_types(e) == ["RuntimeError"]],
                within=15,
                what="the unhandled RuntimeError's event at the fake Sentry",
            )
            event = crashed[0]
            assert event["environment"] == "test"
            assert event["tags"]["request_id"] == r.headers["x-request-id"]  # the log line's id
            request = event["request"]
            assert request["url"].endswith("/v1/_test/boom")
            headers = {k.lower(): v for k, v in request["headers"].items()}
            for name in ("authorization", "cookie", "stripe-signature"):
                assert headers.get(name) in (FILTERED, "", None), (name, headers.get(name))
            assert "code=" + FILTERED in request.get(
                "query_string", ""
            ) and "symbol=" + FILTERED in request.get("query_string", "")

            # A database error: PostgreSQL's message quotes the bound value; the event must not.
            r = await server.http.get("/v1/_test/db-error", params={"value": bound})
            assert r.status_code == 500
            await eventually(
                lambda: any(
                    e.get("tags", {}).get("request_id") == r.headers["x-request-id"] for e in events(fake)
                ),
                within=15,
                what="the database error's event at the fake Sentry",
            )
            text = raw_text(fake)
            for secret in (bearer, bearer.split(".")[1], cookie, signature, code, bound):
                assert secret not in text, f"{secret[:16]}... reached Sentry"
            assert all(
                r.headers.get("x-sentry-auth", "").count("publickey0123456789") for r in fake.seen(ENVELOPE)
            )
    finally:
        await servers.stop_all()
        await fake.stop()


def _exception_types(event: dict[str, Any]) -> list[str]:
    return [v.get("type") for v in (event.get("exception") or {}).get("values", [])]


async def test_without_a_dsn_nothing_is_initialised(make_client) -> None:
    client = await make_client()
    assert (await client.get("/healthz")).status_code == 200
    assert not sentry_sdk.get_client().is_active()
    assert init_error_tracking(None, environment="test", release="x") is False
    assert init_error_tracking("", environment="test", release="x") is False
    assert not sentry_sdk.get_client().is_active()


def test_a_malformed_dsn_is_a_configuration_error_that_does_not_echo_it() -> None:
    url = "postgresql://u@127.0.0.1:5432/db"
    with pytest.raises(ConfigurationError) as caught:
        make_settings(url, sentry_dsn="https://secretish-key@errors.example.com/")  # no project id
    message = str(caught.value)
    assert "SENTRY_DSN" in message and "secretish" not in message
    assert make_settings(url, sentry_dsn="https://abc@errors.example.com/7").sentry_dsn is not None
    assert make_settings(url, sentry_dsn="  ").sentry_dsn is None


def test_scrub_removes_credentials_from_every_part_of_an_event() -> None:
    event = {
        "request": {
            "url": "http://user:hunter2@example.com/v1/x",
            "headers": {"Authorization": "Bearer abc", "X-Request-ID": "r1", "Stripe-Signature": "t=1,v1=s"},
            "cookies": {"session": "s"},
            "data": {"password": "p"},
            "query_string": "state=st4te&code=c0de&limit=5&access_token=t0k",
        },
        "logentry": {"message": "calling with Bearer abc.def.ghi", "params": ["secret-param"]},
        "extra": {"client_secret": "cs", "path": "/v1/orders", "note": "Bearer xyz"},
        "breadcrumbs": {
            "values": [
                {"message": "POST https://discord.com/api/webhooks/123/tok3n-value?wait=true", "data": {}},
                {
                    "category": "httplib",
                    "data": {"url": "https://discord.com/api/webhooks/9/AbC_d-e", "api_key": "k"},
                },
            ]
        },
        "exception": {"values": [{"type": "RuntimeError", "value": "token eyJa.eyJb.sig leaked"}]},
    }
    out = json.dumps(scrub(event, {}))
    for secret in (
        "hunter2",
        "Bearer abc",
        "st4te",
        "c0de",
        "t0k",
        "secret-param",
        '"cs"',
        "xyz",
        "tok3n-value",
    ):
        assert secret not in out, secret
    for secret in ("AbC_d-e", '"k"', "eyJb", '"p"', '"s"', "v1=s"):
        assert secret not in out, secret
    assert "limit=" + FILTERED in out and "/v1/orders" in out and '"r1"' in out  # what is not secret stays


def test_scrub_replaces_a_database_errors_message() -> None:
    import sqlalchemy.exc

    exc = sqlalchemy.exc.DBAPIError("SELECT 1", {"v": "x"}, Exception('invalid input: "bound-secret"'))
    event = {"exception": {"values": [{"type": "DataError", "value": 'invalid input: "bound-secret"'}]}}
    out = scrub(event, {"exc_info": (type(exc), exc, None)})
    assert "bound-secret" not in json.dumps(out)
