"""Access-token tampering: every forged, altered, expired or orphaned token is a 401 problem+json
with WWW-Authenticate: Bearer — and a valid one works."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.auth.helpers import assert_problem, bearer, fetch, signup_and_token
from tests.support.settings import TEST_JWT_SECRET


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(user_id: str, **changes: object) -> dict:
    now = int(time.time())
    claims = {
        "sub": user_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": "tradedesk",
        "aud": "tradedesk-api",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict, key: str | bytes = TEST_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def _unsigned(header: dict, claims: dict, signature: str = "") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{signature}"


def _flip_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[0] ^= 0x01
    return f"{head}.{payload}.{_b64(bytes(raw))}"


def _swap_payload(token: str, claims: dict) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"


_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)

# name -> builder(user_id, valid_token) -> forged token
TAMPERED: dict[str, Callable[[str, str], str]] = {
    "alg none": lambda sub, _: _unsigned({"alg": "none", "typ": "JWT"}, _claims(sub)),
    "alg None mixed case": lambda sub, _: _unsigned({"alg": "None", "typ": "JWT"}, _claims(sub)),
    "alg none with signature": lambda sub, t: _unsigned({"alg": "none"}, _claims(sub), t.split(".")[2]),
    "HS512 with the right secret": lambda sub, _: _sign(_claims(sub), alg="HS512"),
    "HS384 with the right secret": lambda sub, _: _sign(_claims(sub), alg="HS384"),
    "RS256 with an attacker key": lambda sub, _: _sign(_claims(sub), _RSA_KEY, "RS256"),
    "HS256 with the wrong secret": lambda sub, _: _sign(
        _claims(sub), "another-secret-0123456789-abcdefghijkl"
    ),
    "signature bit flipped": lambda sub, t: _flip_signature(t),
    "signature removed": lambda sub, t: t.rsplit(".", 1)[0] + ".",
    "payload swapped (other user)": lambda sub, t: _swap_payload(t, _claims(str(uuid.uuid4()))),
    "payload swapped (longer expiry)": lambda sub, t: _swap_payload(
        t, _claims(sub, exp=int(time.time()) + 10**7)
    ),
    "expired": lambda sub, _: _sign(_claims(sub, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)),
    "expired just now (beyond leeway)": lambda sub, _: _sign(_claims(sub, exp=int(time.time()) - 30)),
    "issued in the future": lambda sub, _: _sign(_claims(sub, iat=int(time.time()) + 3600)),
    "wrong audience": lambda sub, _: _sign(_claims(sub, aud="someone-else")),
    "wrong issuer": lambda sub, _: _sign(_claims(sub, iss="evil")),
    "missing sub": lambda sub, _: _sign(_claims(sub, sub=None)),
    "missing exp": lambda sub, _: _sign(_claims(sub, exp=None)),
    "missing iat": lambda sub, _: _sign(_claims(sub, iat=None)),
    "missing jti": lambda sub, _: _sign(_claims(sub, jti=None)),
    "missing iss": lambda sub, _: _sign(_claims(sub, iss=None)),
    "missing aud": lambda sub, _: _sign(_claims(sub, aud=None)),
    "sub not a uuid": lambda sub, _: _sign(_claims(sub, sub="admin")),
    "sub is a number": lambda sub, _: _sign(_claims(sub, sub=1)),
    "exp not a number": lambda sub, _: _sign(_claims(sub, exp="tomorrow")),
    "garbage": lambda sub, _: "not-a-jwt",
    "two segments": lambda sub, t: ".".join(t.split(".")[:2]),
    "empty segments": lambda sub, _: "..",
    "non-ascii": lambda sub, _: "é.é.é",
}


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("case", sorted(TAMPERED))
async def test_tampered_token_is_401(client: httpx.AsyncClient, case: str) -> None:
    user, token = await signup_and_token(client)
    forged = TAMPERED[case](user["id"], token)
    for method in ("GET", "PATCH"):
        r = await client.request(
            method,
            "/v1/auth/me",
            headers={"Authorization": b"Bearer " + forged.encode()},
            json={"display_name": "pwned"} if method == "PATCH" else None,
        )
        body = assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert body["type"] == "/problems/invalid-token"
        assert forged not in r.text
    # The real token still works, and nothing was changed through the forged one.
    me = await client.get("/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["display_name"] is None


async def test_token_signed_for_a_deleted_user_is_401(client: httpx.AsyncClient, database_url: str) -> None:
    user, token = await signup_and_token(client)
    assert (await client.get("/v1/auth/me", headers=bearer(token))).status_code == 200
    await fetch(database_url, "DELETE FROM users WHERE id = $1::uuid", user["id"])
    r = await client.get("/v1/auth/me", headers=bearer(token))
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_well_formed_token_for_an_unknown_user_is_401(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/auth/me", headers=bearer(_sign(_claims(str(uuid.uuid4()))))), 401)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token abc"},
    ],
)
async def test_missing_or_non_bearer_credentials_are_401(client: httpx.AsyncClient, headers: dict) -> None:
    r = await client.get("/v1/auth/me", headers=headers)
    body = assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    assert body["type"] == "/problems/unauthorized"


async def test_bearer_scheme_is_case_insensitive(client: httpx.AsyncClient) -> None:
    _, token = await signup_and_token(client)
    assert (await client.get("/v1/auth/me", headers={"Authorization": f"bearer {token}"})).status_code == 200


async def test_token_from_another_secret_deployment_is_refused(make_client) -> None:
    one = await make_client()
    two = await make_client(jwt_secret="a-completely-different-secret-9876543210-zyxwvu")
    _, token = await signup_and_token(one)
    assert_problem(await two.get("/v1/auth/me", headers=bearer(token)), 401)
