"""The OpenAPI document (app/core/openapi.py) is valid OpenAPI 3.1 and tells the truth; each mismatch the
fuzzer found (tests/core/test_openapi_fuzz.py) has its own regression test here, through the app's full
stack into the test PostgreSQL database."""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import pytest
import schemathesis

from app.core.errors import PROBLEM_CONTENT_TYPE
from app.core.openapi import PROBLEM_REF
from tests.auth.helpers import bearer, signup, signup_and_token, unique_email
from tests.support.problems import assert_problem

METHODS = {"get", "put", "post", "delete", "patch", "options", "head"}
ERROR_AS_JSON_RPC = {("/mcp", "post", "400"), ("/mcp", "post", "406")}  # the MCP SDK's own answers


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS]


def parameter(op: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in op.get("parameters", []) if p["name"] == name)


@pytest.fixture
async def doc(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


# ------------------------------------------------------------------------------------------ the document
async def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema; raises when invalid
    broken = copy.deepcopy(doc)
    broken["paths"]["/healthz"]["get"]["responses"]["200"].pop("description")  # required by the spec
    with pytest.raises(Exception, match="description"):
        schemathesis.openapi.from_dict(broken).validate()


async def test_every_error_is_a_problem_with_the_shared_schema(doc: dict[str, Any]) -> None:
    assert doc["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status", "detail"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's shape, never sent
    for path, method, op in operations(doc):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]
            if (path, method, status) in ERROR_AS_JSON_RPC:
                assert PROBLEM_CONTENT_TYPE not in content and "application/json" in content
                continue
            assert content[PROBLEM_CONTENT_TYPE]["schema"] == {"$ref": PROBLEM_REF}, (path, method, status)
        assert {"403", "500"} <= set(op["responses"]), (path, method)


async def test_shared_answers_are_documented_where_they_can_happen(doc: dict[str, Any]) -> None:
    for path, method, op in operations(doc):
        responses = op["responses"]
        if op.get("security"):
            assert "WWW-Authenticate" in responses["401"]["headers"], (path, method)
        if path.startswith("/v1/") or path == "/mcp":  # RATE_LIMIT_DEFAULT
            assert "Retry-After" in responses["429"]["headers"], (path, method)
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert "404" in responses, (path, method)
        if "requestBody" in op:
            assert "413" in responses, (path, method)
    # exempt from the limits (contract §3), and no database behind them
    for path in ("/healthz", "/metrics"):
        assert {"429", "503"}.isdisjoint(doc["paths"][path]["get"]["responses"]), path
    assert "503" in doc["paths"]["/v1/auth/me"]["get"]["responses"]  # uses the database
    assert "401" not in doc["paths"]["/v1/market-data/quotes/{symbol}"]["get"]["responses"]  # no login


async def test_a_problem_answer_matches_the_problem_schema(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    import jsonschema

    problem = assert_problem(await client.get("/v1/auth/me"), 401)
    jsonschema.validate(problem, doc["components"]["schemas"]["Problem"])
    problem = assert_problem(await client.get("/v1/market-data/quotes/1X"), 422)
    jsonschema.validate(problem, doc["components"]["schemas"]["Problem"])


# ------------------------------------------------------------------------------ headers the routes check
async def test_idempotency_key_is_documented_required_and_still_answered_400(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    key = parameter(doc["paths"]["/v1/orders"]["post"], "Idempotency-Key")
    assert key["in"] == "header" and key["required"] is True
    assert key["schema"] == {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$"}
    _, token = await signup_and_token(client)
    order = {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market", "time_in_force": "day"}
    for headers in ({}, {"Idempotency-Key": "short"}):
        r = await client.post("/v1/orders", json=order, headers={**bearer(token), **headers})
        body = assert_problem(r, 400)
        assert body["errors"][0]["field"] == "header.Idempotency-Key"
        assert re.fullmatch(key["schema"]["pattern"], headers.get("Idempotency-Key", "")) is None


async def test_stripe_signature_is_documented_required_and_a_missing_one_is_still_400(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    op = doc["paths"]["/v1/webhooks/stripe"]["post"]
    signature = parameter(op, "Stripe-Signature")
    assert signature["in"] == "header" and signature["required"] is True
    assert op["requestBody"]["required"] is True and "400" in op["responses"]
    r = await client.post("/v1/webhooks/stripe", content=b'{"id": "evt_1", "type": "invoice.paid"}')
    assert "signature" in assert_problem(r, 400)["detail"].lower()


async def test_the_oauth_callback_documents_state_as_required_and_answers_400_without(
    make_client: Any, doc: dict[str, Any]
) -> None:
    client = await make_client(
        broker_oauth_provider="local",
        alpaca_oauth_client_id="client",
        alpaca_oauth_client_secret="secret",
        alpaca_oauth_redirect_uri="http://localhost:3000/broker/callback",
    )
    state = parameter(doc["paths"]["/v1/oauth/alpaca/callback"]["get"], "state")
    assert state["required"] is True and state["schema"] == {
        "type": "string",
        "maxLength": 256,
        "minLength": 1,
    }
    body = assert_problem(await client.get("/v1/oauth/alpaca/callback", params={"code": "c"}), 400)
    assert body["errors"] == [{"field": "query.state", "message": "required"}]


# ------------------------------------------------------------------------------------------- 405 / Allow
@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v1/auth/me", "GET, HEAD, PATCH"),  # one route per method: Starlette named only the first
        ("/v1/broker/connection", "GET, HEAD, DELETE"),
        ("/v1/alerts/discord", "POST"),  # not read as /v1/alerts/{alert_id}: that one takes UUIDs only
        ("/v1/orders/0d6f7a36-7a3c-4a8e-9d7e-2b1f0c3e4d5a", "GET, HEAD, DELETE"),
    ],
)
async def test_a_405_lists_every_method_of_the_path_in_allow(
    client: httpx.AsyncClient, doc: dict[str, Any], path: str, allow: str
) -> None:
    r = await client.options(path)
    assert_problem(r, 405)
    assert r.headers["allow"] == allow
    template = re.sub(r"/[0-9a-f-]{36}$", "/{order_id}", path)
    documented = {m.upper() for m in doc["paths"][template] if m in METHODS}
    assert documented == set(allow.split(", ")) - {"HEAD"}


async def test_a_non_uuid_alert_id_is_no_route(client: httpx.AsyncClient) -> None:
    _, token = await signup_and_token(client)
    r = await client.get("/v1/alerts/discord", headers=bearer(token))
    assert_problem(r, 405)
    assert r.headers["allow"] == "POST"
    assert_problem(await client.get("/v1/alerts/not-a-uuid", headers=bearer(token)), 404)


# ------------------------------------------------------------------------------------------- market data
async def test_an_empty_start_or_end_is_a_422(client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    for name in ("start", "end"):
        r = await client.get("/v1/market-data/bars/AAPL", params={name: ""})
        assert [e["field"] for e in assert_problem(r, 422)["errors"]] == [f"query.{name}"]
        pattern = parameter(doc["paths"]["/v1/market-data/bars/{symbol}"]["get"], name)["schema"]["pattern"]
        assert re.search(pattern, "") is None
        assert re.search(pattern, "2024-01-02") and re.search(pattern, "2024-02-29T14:30:00.5-05:00")
        assert not re.search(pattern, "2023-02-29") and not re.search(pattern, "20240102")


async def test_every_date_the_pattern_allows_is_accepted(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    pattern = parameter(doc["paths"]["/v1/market-data/bars/{symbol}"]["get"], "start")["schema"]["pattern"]
    for value in ["1970-01-01T00:00Z", "2024-02-29", "1999-12-31T23:59:59.999999-23:59"]:
        assert re.search(pattern, value), value
        r = await client.get("/v1/market-data/bars/AAPL", params={"start": value, "limit": 1})
        assert r.status_code == 200, (value, r.text)
    for value in ["20240102", "2024-01-02T14:30:00.1234567", " 2024-01-02", "2024-W01-1"]:
        assert not re.search(pattern, value), value  # datetime.fromisoformat takes these; the server does not
        assert_problem(await client.get("/v1/market-data/bars/AAPL", params={"start": value}), 422)


@pytest.mark.parametrize("symbol", ["ſ", "ﬀ", "ı"])  # upper-case to "S", "FF", "I"
async def test_a_non_ascii_symbol_is_422_as_the_pattern_says(
    client: httpx.AsyncClient, doc: dict[str, Any], symbol: str
) -> None:
    pattern = parameter(doc["paths"]["/v1/market-data/quotes/{symbol}"]["get"], "symbol")["schema"]["pattern"]
    assert re.search(pattern, symbol) is None and re.search(pattern, "brk.b")
    assert_problem(await client.get(f"/v1/market-data/quotes/{symbol}"), 422)


# ------------------------------------------------------------------------------------------ user text
async def test_display_name_limit_is_the_documented_one(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    schema = doc["components"]["schemas"]["SignupRequest"]["properties"]["display_name"]
    limit = schema["anyOf"][0]["maxLength"]
    assert limit == 100
    at_limit = await signup(client, display_name="n" * limit)
    assert at_limit.status_code == 201 and at_limit.json()["display_name"] == "n" * limit
    over = assert_problem(await signup(client, display_name="n" * (limit + 1)), 422)
    assert [e["field"] for e in over["errors"]] == ["display_name"]
    # markup counts as sent: 95 characters of text in tags (102 in all) is over the limit
    assert_problem(await signup(client, display_name="<b>" + "n" * 95 + "</b>"), 422)
    # and a character the pattern refuses is refused by the server
    assert re.search(schema["pattern"], "a\u202eb") is None
    assert_problem(await signup(client, display_name="a\u202eb"), 422)


async def test_profile_limits_are_the_documented_ones(client: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    props = doc["components"]["schemas"]["ProfileUpdate"]["properties"]
    name_limit, bio_limit = (
        props["display_name"]["anyOf"][0]["maxLength"],
        props["bio"]["anyOf"][0]["maxLength"],
    )
    _, token = await signup_and_token(client)
    ok = await client.patch(
        "/v1/auth/me", json={"display_name": "d" * name_limit, "bio": "b" * bio_limit}, headers=bearer(token)
    )
    assert ok.status_code == 200, ok.text
    for field, limit in (("display_name", name_limit), ("bio", bio_limit)):
        r = await client.patch("/v1/auth/me", json={field: "x" * (limit + 1)}, headers=bearer(token))
        assert [e["field"] for e in assert_problem(r, 422)["errors"]] == [field]


async def test_an_email_at_a_special_use_domain_is_refused_as_documented(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    email = doc["components"]["schemas"]["SignupRequest"]["properties"]["email"]
    assert email["format"] == "email"
    for address in ("ada@example.test", "ada@x.ONION"):
        assert re.search(email["not"]["pattern"], address)
        assert_problem(await signup(client, address), 422)
    assert re.search(email["not"]["pattern"], unique_email()) is None


async def test_an_order_quantity_in_non_ascii_digits_is_refused_as_the_pattern_says(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    pattern = doc["components"]["schemas"]["OrderCreate"]["properties"]["qty"]["pattern"]
    assert re.search(pattern, "١٠") is None and re.search(pattern, "10.5")
    _, token = await signup_and_token(client)
    order = {"symbol": "AAPL", "qty": "١٠", "side": "buy", "type": "market", "time_in_force": "day"}
    r = await client.post("/v1/orders", json=order, headers={**bearer(token), "Idempotency-Key": "key-0001"})
    assert [e["field"] for e in assert_problem(r, 422)["errors"]] == ["qty"]


# ---------------------------------------------------------------------------------------------- /mcp
async def test_mcp_answers_a_wrong_content_type_with_a_json_rpc_error(
    client: httpx.AsyncClient, doc: dict[str, Any]
) -> None:
    _, token = await signup_and_token(client)
    r = await client.post("/mcp", content=b"{}", headers={**bearer(token), "Content-Type": "text/plain"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["code"] == -32600 and r.json()["jsonrpc"] == "2.0"
    documented = doc["paths"]["/mcp"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    import jsonschema

    jsonschema.validate(r.json(), documented)
