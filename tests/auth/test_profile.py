"""GET/PATCH /v1/auth/me: contract fields, partial updates, sanitization on input, 422s."""

from __future__ import annotations

import httpx
import pytest

from tests.auth.helpers import assert_problem, bearer, error_fields, signup_and_token, user_row


async def test_me_returns_the_contract_fields(client: httpx.AsyncClient) -> None:
    user, token = await signup_and_token(client, display_name="Grace")
    r = await client.get("/v1/auth/me", headers=bearer(token))
    assert r.status_code == 200
    assert r.json() == {
        "id": user["id"],
        "email": user["email"],
        "display_name": "Grace",
        "bio": None,
        "subscription_status": "none",
    }


async def test_patch_updates_only_the_fields_sent(client: httpx.AsyncClient, database_url: str) -> None:
    user, token = await signup_and_token(client, display_name="Grace")
    before = await user_row(database_url, user["id"])
    r = await client.patch("/v1/auth/me", headers=bearer(token), json={"bio": "<p>Hello <b>world</b></p>"})
    assert r.status_code == 200, r.text
    assert r.json()["display_name"] == "Grace" and r.json()["bio"] == "<p>Hello <b>world</b></p>"
    r = await client.patch("/v1/auth/me", headers=bearer(token), json={"display_name": "Grace Hopper"})
    assert r.json()["display_name"] == "Grace Hopper" and r.json()["bio"] == "<p>Hello <b>world</b></p>"
    row = await user_row(database_url, user["id"])
    assert (row["display_name"], row["bio"]) == ("Grace Hopper", "<p>Hello <b>world</b></p>")
    assert row["updated_at"] > before["updated_at"]
    assert row["email"] == before["email"] and row["password_hash"] == before["password_hash"]
    # The stored value is what later reads return.
    me = (await client.get("/v1/auth/me", headers=bearer(token))).json()
    assert (me["display_name"], me["bio"]) == ("Grace Hopper", "<p>Hello <b>world</b></p>")


async def test_empty_body_changes_nothing(client: httpx.AsyncClient) -> None:
    _, token = await signup_and_token(client, display_name="Grace")
    r = await client.patch("/v1/auth/me", headers=bearer(token), json={})
    assert r.status_code == 200 and r.json()["display_name"] == "Grace"


@pytest.mark.parametrize("cleared", [None, "", "   ", "<script>x</script>"])
async def test_null_empty_or_markup_only_clears_a_field(
    client: httpx.AsyncClient, database_url: str, cleared: str | None
) -> None:
    user, token = await signup_and_token(client, display_name="Grace")
    await client.patch("/v1/auth/me", headers=bearer(token), json={"bio": "<p>x</p>"})
    r = await client.patch(
        "/v1/auth/me", headers=bearer(token), json={"display_name": cleared, "bio": cleared}
    )
    assert r.status_code == 200, r.text
    assert r.json()["display_name"] is None and r.json()["bio"] is None
    row = await user_row(database_url, user["id"])
    assert row["display_name"] is None and row["bio"] is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "new@example.com"}, "email"),
        ({"password": "new password 123"}, "password"),
        ({"subscription_status": "active"}, "subscription_status"),
        ({"id": "00000000-0000-0000-0000-000000000000"}, "id"),
        ({"display_name": "ok", "is_admin": True}, "is_admin"),
        ({"display_name": "tab\tis fine but bell \u0007 is not"}, "display_name"),
        ({"bio": "<p>null \u0000 byte</p>"}, "bio"),
        ({"bio": "<p>escape \x1b[31m</p>"}, "bio"),
        ({"display_name": "\u202eevil"}, "display_name"),
        ({"display_name": "&#x202E;evil"}, "display_name"),
        ({"display_name": "y" * 101}, "display_name"),
        ({"bio": "z" * 5001}, "bio"),
        ({"display_name": ["list"]}, "display_name"),
        ({"bio": {"html": "<p>"}}, "bio"),
    ],
)
async def test_invalid_patch_is_422_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, database_url: str, payload: dict, field: str
) -> None:
    user, token = await signup_and_token(client, display_name="Grace")
    before = await user_row(database_url, user["id"])
    r = await client.patch("/v1/auth/me", headers=bearer(token), json=payload)
    assert field in error_fields(r), r.json()
    after = await user_row(database_url, user["id"])
    assert dict(after) == dict(before)


async def test_non_json_patch_is_422(client: httpx.AsyncClient) -> None:
    _, token = await signup_and_token(client)
    r = await client.patch(
        "/v1/auth/me", headers={**bearer(token), "content-type": "application/json"}, content=b"{not json"
    )
    assert_problem(r, 422)


async def test_display_name_is_plain_text_and_bio_rich_text(client: httpx.AsyncClient) -> None:
    _, token = await signup_and_token(client)
    r = await client.patch(
        "/v1/auth/me",
        headers=bearer(token),
        json={
            "display_name": "  Tom &amp; <i>Jerry</i>\n\t &lt;3  ",
            "bio": '<p onclick="x()">Trader. <a href="https://ok.example/a?b=1&c=2" target="_blank">site</a>'
            '<img src=x onerror=alert(1)><script>alert(2)</script> <a href="javascript:alert(3)">bad</a></p>',
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["display_name"] == "Tom & Jerry <3"
    assert body["bio"] == (
        '<p>Trader. <a href="https://ok.example/a?b=1&amp;c=2" rel="noopener noreferrer nofollow">site</a> '
        '<a rel="noopener noreferrer nofollow">bad</a></p>'
    )


async def test_unicode_text_survives(client: httpx.AsyncClient) -> None:
    _, token = await signup_and_token(client)
    name = "Zoë 李小龍 👨‍👩‍👧 עברית"
    r = await client.patch(
        "/v1/auth/me", headers=bearer(token), json={"display_name": name, "bio": "<p>Café — 東京</p>"}
    )
    assert r.status_code == 200
    assert r.json()["display_name"] == name and r.json()["bio"] == "<p>Café — 東京</p>"


async def test_me_requires_a_token(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/auth/me"), 401)
    assert_problem(await client.patch("/v1/auth/me", json={"display_name": "x"}), 401)
