"""/docs and /redoc work offline: every script, stylesheet and icon they load comes from the app
(before: Swagger UI and ReDoc from a CDN, and an inline script the API's CSP would refuse)."""

from __future__ import annotations

import re

import httpx
import pytest

_REF = re.compile(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"')
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)


@pytest.mark.parametrize(
    ("page", "needs"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
async def test_the_page_loads_only_from_this_origin(client: httpx.AsyncClient, page: str, needs: str) -> None:
    resp = await client.get(page)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    refs = _REF.findall(resp.text)
    assert any(r.endswith(needs) for r in refs), refs
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), f"{page} loads {ref} from elsewhere"
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        kind = asset.headers["content-type"]
        assert kind.startswith(("text/javascript", "text/css", "image/png")), (ref, kind)
        assert len(asset.content) > 100, ref
    assert not _INLINE_SCRIPT.search(resp.text), "an inline script: the CSP below would refuse it"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_page_has_a_same_origin_content_security_policy(
    client: httpx.AsyncClient, page: str
) -> None:
    csp = (await client.get(page)).headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]  # no 'unsafe-inline', no CDN host
    assert directives["connect-src"] == ["'self'"]  # Try it out talks to this API only
    assert directives["frame-ancestors"] == ["'none'"]
    assert "http" not in csp and "*" not in csp


async def test_the_big_files_are_cacheable_and_unknown_names_are_404(client: httpx.AsyncClient) -> None:
    js = await client.get("/docs/static/swagger-ui-bundle.js")
    assert "max-age=86400" in js.headers["cache-control"]
    assert js.headers.get("etag")
    missing = await client.get("/docs/static/../../app/main.py")
    assert missing.status_code == 404
    unknown = await client.get("/docs/static/swagger-ui-bundle.js.map")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
