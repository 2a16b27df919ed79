from __future__ import annotations

import httpx


def assert_problem(r: httpx.Response, status: int) -> dict:
    """The response is an RFC 9457 problem with the given status, carrying the request id."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status
    for key in ("type", "title", "detail"):
        assert isinstance(body[key], str) and body[key]
    assert body["request_id"] == r.headers["x-request-id"]
    return body
