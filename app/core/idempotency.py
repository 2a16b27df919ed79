"""``Idempotency-Key`` for POST routes: a retried request never runs twice; it gets the first answer.

Using it
--------
A feature declares the dependency once in its ``deps.py``. Core knows no user, so the feature names
the keys' owner with a dependency that returns the caller's user id::

    async def caller_id(user: CurrentUser) -> uuid.UUID:
        return user.id

    OrderIdempotency = Annotated[IdempotencyRecord, idempotency_key(owner=caller_id, takeover_after=None)]

The route takes ``idem: OrderIdempotency`` and returns the ``Response`` that
``await idem.complete(session, status_code=201, content=..., headers={"Location": ...})`` gives back.
``install_idempotency(app)`` (``create_app``) registers the handler that answers replays.

Before the route runs
---------------------
1. The header must be sent once and be 8–64 characters of ``[A-Za-z0-9_-]``; otherwise 400
   problem+json with ``errors: [{"field": "header.Idempotency-Key", ...}]`` (missing too).
2. The request is fingerprinted (``request_fingerprint``, below).
3. (user, key) is claimed by ONE statement that commits on its own
   (``Database.own_transaction(single_statement=True)``), before any of the route's work, so a
   concurrent duplicate — in this process or another — sees the claim: ``INSERT … ON CONFLICT (user_id,
   key) DO UPDATE … WHERE <the row may be re-claimed>`` in a CTE, with the existing row selected in the
   same statement when the claim fails. A row may be re-claimed when it expired (``expires_at <= now()``,
   the database clock) or, for routes that allow it, when it is in flight with the same fingerprint and
   its ``locked_at`` is older than ``takeover_after`` seconds. Otherwise the existing row decides:

   * another fingerprint → 422 problem+json (``/problems/idempotency-key-reused``), in flight or not;
   * completed → the stored status, headers and body, byte for byte, plus ``Idempotent-Replayed: true``;
   * still in flight → 409 problem+json (``/problems/idempotency-in-flight``) with ``Retry-After: 1``.

Recording the response
----------------------
The dependency yields an ``IdempotencyRecord``. The route (or its service) calls
``await record.complete(session, ...)`` inside the transaction that commits its result: the request
session (``SessionDep``), or the last ``own_transaction`` of a multi-phase flow such as an order's
phase (c). The stored response and the business result therefore commit together or not at all.
``complete`` renders the body once (JSON exactly as FastAPI's ``JSONResponse`` does), stores it with
the status and the headers the route passed (plus Content-Type), and returns the ``Response`` to send,
built from the stored pieces: the first answer and every replay are the same bytes. Per-request headers
(X-Request-ID, X-RateLimit-*, security headers) are added by middleware to both and never stored.
``complete`` updates the row only while it still carries this request's claim (``state = 'in_flight'
AND claim_token = <ours>``, a random token per claim); if the claim was lost (taken over, or expired
and re-claimed) it raises ``IdempotencyClaimLost`` (409), so the caller's transaction — its business
result included — rolls back.

When the route does not complete
--------------------------------
* It raises (a 4xx such as a body that fails validation, a 5xx, anything): the claim is released — the
  in-flight row deleted — so the client may retry with the same key. This is right as long as nothing
  the route did has committed outside the transaction that would have completed the record (that one
  rolled back with the exception). The release deletes only this claim's row (its ``claim_token``) and
  skips a row locked by a still-open transaction (``FOR UPDATE SKIP LOCKED``), so it never waits on the
  request's own session: a record completed in the request session just before an error (or whose
  session then fails to commit) stays in flight until it is taken over, as after a crash.
* Before the first effect that commits elsewhere — an order's phase (a), then the broker call — the
  route calls ``record.keep()``: from then on an error leaves the row in flight, and the feature's
  recovery owns it.
* It returns without ``complete()`` or ``keep()``: a programming error; it is logged and answered 500
  (the request session, when it exits after this dependency, rolls back), the row stays in flight.

A crash in flight
-----------------
A process that dies (SIGKILL, power loss) or a task cancelled mid-request leaves the row ``in_flight``
with its ``locked_at``; a retry gets 409 until it is recovered, in one of two ways, chosen per route by
the required ``takeover_after`` argument:

* ``takeover_after=<seconds>`` — for routes whose every effect commits in the transaction that
  completes the record (request-session work). Their crashed work never committed, so after that many
  seconds a retry with the same request takes the claim over and runs the work again. Were the first
  request merely slow rather than dead, it can no longer complete (the claim token is not its own any
  more): it answers 409 and its work rolls back. Choose it well above the route's longest run.
* ``takeover_after=None`` — for routes with effects outside that transaction (an order: the broker call
  is not undone by a rollback). Nothing re-runs them automatically; the feature's recovery job finishes
  the key: the orders reconciler settles the order (found through its ``client_order_id``, derived from
  (user, key)) and calls ``complete_in_flight(session, user_id=…, key=…, ...)`` in the transaction that
  records the settled order, so later retries replay it (or ``release_in_flight`` when it decides the
  work never happened). Left alone, such a row is re-usable once it expires.

Expiry: ``expires_at`` is the claim time plus ``IDEMPOTENCY_TTL_SECONDS``. An expired key is a new key
(re-claimed atomically by the same statement); expired rows are deleted in bounded batches by
``purge_expired`` — the cleanup loop (``app/workers/cleanup.py``) and ``python -m app.cli
purge-idempotency-keys``.

The canonical request (``request_fingerprint``)
-----------------------------------------------
SHA-256 over the canonical JSON of ``[method, route template, path parameters, query parameters (sorted
by name, repeated names in their order), body]``. The body, when it parses as JSON (UTF-8/16/32, no
NaN/Infinity), is re-serialised canonically: object keys sorted by code point (a duplicated key keeps
its last value, as the route's parser does), no whitespace, strings by their characters (escapes do not
matter), and numbers by their exact decimal value — ``1``, ``1.0``, ``1.00`` and ``1e0`` are the same,
``0.1`` stays ``0.1`` (no float rounding) and ``-0`` is ``0`` — but a string is never a number: ``"1"``
differs from ``1``, ``true`` from ``1``, ``null`` from a missing key. The fingerprint compares what the
JSON says, not how the client spelled it; how a route coerces values (``"1"`` → ``Decimal``) is the
route's business. A body that is not JSON is compared by its exact bytes; an empty body is empty.

Metrics (prometheus_client, defined here as ``app/core/middleware.py`` does its own; counters only, so
multiprocess mode needs nothing special): ``idempotency_requests_total{outcome}`` with ``claimed``,
``replayed``, ``conflict`` (another fingerprint), ``in_flight``, ``bad_key``;
``idempotency_released_total`` (claims released after an error); ``idempotency_keys_purged_total``.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the dependency's annotations at
# runtime, and they name ``owner``, a closure variable string annotations could not see.

import asyncio
import datetime as dt
import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Self

from fastapi import FastAPI, Request, params
from fastapi.encoders import jsonable_encoder
from prometheus_client import Counter
from sqlalchemy import (
    Interval,
    LargeBinary,
    SmallInteger,
    and_,
    bindparam,
    delete,
    false,
    func,
    null,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from app.core.db import Database, rowcount
from app.core.deps import DatabaseDep, SettingsDep
from app.core.errors import BadRequest, Conflict, Unprocessable, log_exception
from app.core.idempotency_models import COMPLETED, IN_FLIGHT, IdempotencyKey
from app.core.middleware import route_template
from app.core.openapi import required_header

log = logging.getLogger("tradedesk.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")
IN_FLIGHT_RETRY_AFTER_SECONDS = 1
PURGE_BATCH_SIZE = 1000
# Headers a route may not store: framing (recomputed), per-request identity, or secrets.
UNSTORABLE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "set-cookie", "x-request-id", "idempotent-replayed"}
)
_FIELD = f"header.{HEADER}"

IDEMPOTENCY_REQUESTS = Counter(
    "idempotency_requests_total",
    "Requests carrying an Idempotency-Key, by outcome (claimed, replayed, conflict: the key was used for "
    "another request, in_flight: answered 409, bad_key: missing or malformed, answered 400).",
    ["outcome"],
)
for _outcome in ("claimed", "replayed", "conflict", "in_flight", "bad_key"):
    IDEMPOTENCY_REQUESTS.labels(_outcome)
IDEMPOTENCY_RELEASED = Counter(
    "idempotency_released_total",
    "In-flight claims released because the route failed before completing (the key may be used again).",
)
IDEMPOTENCY_PURGED = Counter(
    "idempotency_keys_purged_total", "Expired idempotency keys deleted (cleanup loop and CLI)."
)


# --------------------------------------------------------------------------------------
# Errors and the replay
# --------------------------------------------------------------------------------------
class InvalidIdempotencyKey(BadRequest):
    slug = "idempotency-key"


class IdempotencyKeyReused(Unprocessable):
    slug = "idempotency-key-reused"


class IdempotencyKeyInFlight(Conflict):
    slug = "idempotency-in-flight"


class IdempotencyClaimLost(Conflict):
    """Raised by ``complete`` when this request no longer holds the key: its transaction must roll back."""

    slug = "idempotency-in-flight"


class IdempotentReplay(Exception):
    """Raised by the dependency instead of running the route; answered with the stored response."""

    def __init__(self, response: Response) -> None:
        self.response = response
        super().__init__("idempotent replay")


async def _replay_handler(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, IdempotentReplay):  # registered for IdempotentReplay only
        raise exc
    return exc.response


def install_idempotency(app: FastAPI) -> None:
    """Register the handler that answers a replay with the stored response (``create_app``)."""
    app.add_exception_handler(IdempotentReplay, _replay_handler)


# --------------------------------------------------------------------------------------
# The canonical request
# --------------------------------------------------------------------------------------
class _Number(str):
    """A JSON number in canonical form (see ``_canonical_number``), serialised without quotes."""


def _canonical_number(text: str) -> _Number:
    """The exact decimal value as ``[-]digits[e<exp>]``, trailing zeros folded into the exponent:
    1, 1.0 and 1e0 → "1"; 100 → "1e2"; 0.10 → "1e-1"; -0 → "0". Never expands an exponent (1e999999999
    stays short) and never rounds."""
    try:
        sign, digits, exponent = Decimal(text).as_tuple()
    except InvalidOperation:  # an exponent beyond Decimal's range: keep the spelling, still exact
        return _Number("n" + text.lower())
    if not isinstance(exponent, int):  # NaN/Infinity: JSON has no such numerals (parse_constant refuses them)
        raise ValueError(f"{text} is not JSON")
    numerals = "".join(map(str, digits)).lstrip("0")
    if not numerals:
        return _Number("0")
    stripped = numerals.rstrip("0")
    exponent += len(numerals) - len(stripped)
    return _Number(("-" if sign else "") + stripped + (f"e{exponent}" if exponent else ""))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dump(value: Any) -> str:
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_dump(k)}:{_dump(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical_json(body: bytes) -> str | None:
    """The body's canonical JSON text, or None when it is not JSON (see the module docstring)."""
    try:
        value = json.loads(
            body, parse_float=_canonical_number, parse_int=_canonical_number, parse_constant=_reject_constant
        )
        return _dump(value)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def request_fingerprint(
    *,
    method: str,
    route: str,
    path_params: Mapping[str, Any],
    query: Iterable[tuple[str, str]],
    body: bytes,
) -> str:
    """SHA-256 (hex) of the canonical request: what makes two requests "the same" for a key."""
    if not body:
        body_part = ["empty"]
    elif (canonical := canonical_json(body)) is not None:
        body_part = ["json", canonical]
    else:
        body_part = ["bytes", hashlib.sha256(body).hexdigest()]
    parts = [
        method.upper(),
        route,
        {name: str(value) for name, value in path_params.items()},
        [[name, value] for name, value in sorted(query, key=lambda item: item[0])],
        body_part,
    ]
    return hashlib.sha256(_dump(parts).encode()).hexdigest()


def _validated_key(request: Request) -> str:
    values = request.headers.getlist(HEADER)
    if not values:
        problem = f"the {HEADER} header is required on this route"
    elif len(values) > 1:
        problem = f"send the {HEADER} header once"
    elif not KEY_PATTERN.fullmatch(values[0]):
        problem = "must be 8-64 characters of A-Z, a-z, 0-9, '_' and '-'"
    else:
        return values[0]
    IDEMPOTENCY_REQUESTS.labels("bad_key").inc()
    raise InvalidIdempotencyKey(f"{HEADER}: {problem}.", errors=[{"field": _FIELD, "message": problem}])


# --------------------------------------------------------------------------------------
# Stored responses
# --------------------------------------------------------------------------------------
def render_json(content: Any) -> bytes:
    """JSON exactly as FastAPI's ``JSONResponse`` renders it (models and decimals via jsonable_encoder)."""
    return json.dumps(
        jsonable_encoder(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    ).encode("utf-8")


def _build_response(status_code: int, headers: Iterable[Iterable[str]], body: bytes) -> Response:
    response = Response(content=body, status_code=status_code)
    for name, value in headers:
        response.headers.append(name, value)
    return response


@dataclass(frozen=True)
class _StoredResponse:
    status_code: int
    headers: list[list[str]]
    body: bytes

    @classmethod
    def of(
        cls,
        *,
        status_code: int,
        content: Any,
        body: bytes | None,
        media_type: str,
        headers: Mapping[str, str] | None,
    ) -> Self:
        if not 200 <= status_code <= 599:
            raise ValueError(f"cannot store status {status_code}")
        stored = [[name.lower(), value] for name, value in (headers or {}).items()]
        refused = sorted({name for name, _ in stored} & UNSTORABLE_HEADERS)
        if refused:
            raise ValueError(f"headers that must not be stored for replay: {refused}")
        if status_code in (204, 304):
            payload = b""
        else:
            payload = body if body is not None else render_json(content)
            if not any(name == "content-type" for name, _ in stored):
                stored.insert(0, ["content-type", media_type])
        return cls(status_code, stored, payload)

    def response(self) -> Response:
        return _build_response(self.status_code, self.headers, self.body)


@functools.cache
def _store_statement(by_claim: bool) -> Any:
    """Completion, built once per kind (the holder's claim, or whoever holds the key) from bind parameters."""
    k = IdempotencyKey
    conditions = [
        k.user_id == bindparam("b_user_id", type_=k.user_id.type),
        k.key == bindparam("b_key", type_=k.key.type),
        k.state == IN_FLIGHT,
    ]
    if by_claim:
        conditions.append(k.claim_token == bindparam("b_claim_token", type_=k.claim_token.type))
    return (
        update(k)
        .where(*conditions)
        .values(
            state=COMPLETED,
            locked_at=None,
            claim_token=None,
            response_status=bindparam("b_response_status", type_=k.response_status.type),
            response_headers=bindparam("b_response_headers", type_=k.response_headers.type),
            response_body=bindparam("b_response_body", type_=k.response_body.type),
        )
        .execution_options(synchronize_session=False)
    )


async def _store(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    key: str,
    claim_token: uuid.UUID | None,
    stored: _StoredResponse,
) -> bool:
    params: dict[str, Any] = {
        "b_user_id": user_id,
        "b_key": key,
        "b_response_status": stored.status_code,
        "b_response_headers": stored.headers,
        "b_response_body": stored.body,
    }
    if claim_token is not None:
        params["b_claim_token"] = claim_token
    return rowcount(await session.execute(_store_statement(claim_token is not None), params)) == 1


@dataclass(frozen=True)
class PreparedCompletion:
    """A response ready to be stored by ``IdempotencyRecord.COMPLETE_SQL`` (see there)."""

    params: dict[str, Any]
    stored: _StoredResponse


class IdempotencyRecord:
    """This request's claim on (user, key): while it holds it, no other request runs the route for it."""

    def __init__(self, *, user_id: uuid.UUID, key: str, fingerprint: str, claim_token: uuid.UUID) -> None:
        self.user_id = user_id
        self.key = key
        self.fingerprint = fingerprint
        self.claim_token = claim_token  # the claim's identity
        self.completed_flag = False
        self.kept = False

    # A condition for a raw SQL statement that must only take effect while this request still holds its
    # claim (an order's phase (a) inserts the order under it, in the same statement): bind ``held_params``.
    HELD_SQL = (
        "EXISTS (SELECT 1 FROM idempotency_keys WHERE user_id = :idem_user_id AND key = :idem_key "  # nosec B608 # state names are module constants; values are bound
        f"AND state = '{IN_FLIGHT}' AND claim_token = :idem_claim_token)"
    )

    def held_params(self) -> dict[str, Any]:
        """The bind parameters of ``HELD_SQL`` for this claim."""
        return {"idem_user_id": self.user_id, "idem_key": self.key, "idem_claim_token": self.claim_token}

    # The completion as raw SQL, for a feature that must store its response in the same statement as
    # its result (an order's phase (c): one round trip instead of a transaction of four). Use it as a
    # data-modifying CTE gated on the result (``… AND EXISTS (SELECT 1 FROM <result>)``), bind
    # ``PreparedCompletion.params`` (typed by ``COMPLETION_TYPES``) and, when the statement says it
    # completed, call ``completed(prepared)`` for the Response to send.
    COMPLETE_SQL = (
        f"UPDATE idempotency_keys SET state = '{COMPLETED}', locked_at = NULL, claim_token = NULL, "  # nosec B608 # state names are module constants; values are bound
        "response_status = :idem_status, response_headers = :idem_headers, response_body = :idem_body "
        "WHERE user_id = :idem_user_id AND key = :idem_key "
        f"AND state = '{IN_FLIGHT}' AND claim_token = :idem_claim_token"
    )
    COMPLETION_TYPES = (
        bindparam("idem_status", type_=SmallInteger()),
        bindparam("idem_headers", type_=JSONB()),
        bindparam("idem_body", type_=LargeBinary()),
    )

    def prepare_completion(
        self,
        *,
        status_code: int,
        content: Any = None,
        body: bytes | None = None,
        media_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> "PreparedCompletion":
        """The response rendered and stored-ready, with the bind parameters of ``COMPLETE_SQL``."""
        stored = _StoredResponse.of(
            status_code=status_code, content=content, body=body, media_type=media_type, headers=headers
        )
        params = {
            **self.held_params(),
            "idem_status": stored.status_code,
            "idem_headers": stored.headers,
            "idem_body": stored.body,
        }
        return PreparedCompletion(params=params, stored=stored)

    def completed(self, prepared: "PreparedCompletion") -> Response:
        """Record that ``COMPLETE_SQL`` stored ``prepared`` (its statement committed): the Response."""
        if self.completed_flag:
            raise RuntimeError("this idempotency record is already completed")
        self.completed_flag = True
        return prepared.stored.response()

    def keep(self) -> None:
        """From here on an error does not release the key: call it before the first effect that commits
        outside the transaction that will complete the record (an order's phase (a)). The row then stays
        in flight until ``complete`` or the feature's recovery (``complete_in_flight``)."""
        self.kept = True

    async def complete(
        self,
        session: AsyncSession,
        *,
        status_code: int,
        content: Any = None,
        body: bytes | None = None,
        media_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Store the response in ``session``'s transaction (the one that commits the route's result) and
        return it, ready to send. ``content`` is rendered as JSON unless raw ``body`` bytes are given.
        Raises ``IdempotencyClaimLost`` (409) when this request no longer holds the key."""
        if self.completed_flag:
            raise RuntimeError("this idempotency record is already completed")
        stored = _StoredResponse.of(
            status_code=status_code, content=content, body=body, media_type=media_type, headers=headers
        )
        if not await _store(
            session, user_id=self.user_id, key=self.key, claim_token=self.claim_token, stored=stored
        ):
            log.warning("idempotency claim lost before completion", extra={"status": status_code})
            raise IdempotencyClaimLost(
                "Another request took over this Idempotency-Key while this one was running; retry to get "
                "its answer.",
                headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_SECONDS)},
            )
        self.completed_flag = True
        return stored.response()


# --------------------------------------------------------------------------------------
# SQL: claim, release, recovery hooks, purge
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    claimed: bool
    state: str
    fingerprint: str
    response_status: int | None
    response_headers: list[list[str]] | None
    response_body: bytes | None


@functools.cache
def _claim_statement(takeover: bool) -> Any:
    """The claim, built once per kind (with or without takeover) from bind parameters, so SQLAlchemy
    compiles it once and every request only binds ``user_id``, ``key``, ``fingerprint``, ``claim_token``,
    ``ttl`` and (with takeover) ``takeover_after``."""
    k = IdempotencyKey
    now = func.now()
    insert = pg_insert(k).values(
        user_id=bindparam("b_user_id", type_=k.user_id.type),
        key=bindparam("b_key", type_=k.key.type),
        fingerprint=bindparam("b_fingerprint", type_=k.fingerprint.type),
        state=IN_FLIGHT,
        locked_at=func.clock_timestamp(),
        claim_token=bindparam("b_claim_token", type_=k.claim_token.type),
        created_at=now,
        expires_at=now + bindparam("b_ttl", type_=Interval()),
    )
    reclaimable = k.expires_at <= now
    if takeover:
        reclaimable = or_(
            reclaimable,
            and_(
                k.state == IN_FLIGHT,
                k.fingerprint == insert.excluded.fingerprint,
                k.locked_at <= now - bindparam("b_takeover_after", type_=Interval()),
            ),
        )
    columns = (k.state, k.fingerprint, k.response_status, k.response_headers, k.response_body)
    claimed = (
        insert.on_conflict_do_update(
            index_elements=[k.user_id, k.key],
            set_={
                "fingerprint": insert.excluded.fingerprint,
                "state": insert.excluded.state,
                "locked_at": insert.excluded.locked_at,
                "claim_token": insert.excluded.claim_token,
                "created_at": insert.excluded.created_at,
                "expires_at": insert.excluded.expires_at,
                "response_status": null(),
                "response_headers": null(),  # SQL NULL (a Python None would be stored as JSON null)
                "response_body": null(),
            },
            where=reclaimable,
        )
        .returning(true().label("claimed"), *columns)
        .cte("claimed")
    )
    # The existing row when the claim failed. It is read with the statement's snapshot: a row another
    # transaction committed (or re-claimed) after that snapshot may be missing or show its old, expired
    # version — hence `expires_at > now()`; the caller then runs the statement again, with a fresh one.
    existing = select(false().label("claimed"), *columns).where(
        k.user_id == bindparam("b_user_id", type_=k.user_id.type),
        k.key == bindparam("b_key", type_=k.key.type),
        k.expires_at > now,
        ~select(claimed.c.claimed).exists(),
    )
    return union_all(select(*claimed.c), existing)


async def _claim(
    database: Database,
    *,
    user_id: uuid.UUID,
    key: str,
    fingerprint: str,
    claim_token: uuid.UUID,
    ttl_seconds: int,
    takeover_after: float | None,
) -> _Row:
    stmt = _claim_statement(takeover_after is not None)
    params: dict[str, Any] = {
        "b_user_id": user_id,
        "b_key": key,
        "b_fingerprint": fingerprint,
        "b_claim_token": claim_token,
        "b_ttl": dt.timedelta(seconds=ttl_seconds),
    }
    if takeover_after is not None:
        params["b_takeover_after"] = dt.timedelta(seconds=takeover_after)
    for _ in range(5):
        async with database.own_transaction(single_statement=True) as session:
            row = (await session.execute(stmt, params)).first()
        if row is not None:
            return _Row(**row._asdict())
        # Raced with a transaction that committed after this statement's snapshot: look again.
    raise RuntimeError("idempotency claim found neither a claim nor a row after 5 attempts")


def _release_statement(*, user_id: uuid.UUID, key: str, claim_token: uuid.UUID) -> Any:
    k = IdempotencyKey
    # SKIP LOCKED: a row an open transaction is completing (this request's own session, which rolls back
    # after this dependency exits) is left alone instead of waited for.
    mine = (
        select(k.user_id, k.key)
        .where(k.user_id == user_id, k.key == key, k.state == IN_FLIGHT, k.claim_token == claim_token)
        .with_for_update(skip_locked=True)
    )
    return delete(k).where(tuple_(k.user_id, k.key).in_(mine))


async def _release(database: Database, record: IdempotencyRecord) -> None:
    stmt = _release_statement(user_id=record.user_id, key=record.key, claim_token=record.claim_token)
    async with database.own_transaction(single_statement=True) as session:
        released = rowcount(await session.execute(stmt))
    if released:
        IDEMPOTENCY_RELEASED.inc()


async def complete_in_flight(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    key: str,
    status_code: int,
    content: Any = None,
    body: bytes | None = None,
    media_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
    claim_token: uuid.UUID | None = None,
) -> bool:
    """Recovery hook: store the response of a request that died in flight, in the caller's transaction —
    the orders reconciler, when it settles an order whose request crashed between its phases. With
    ``claim_token`` only that claim is completed (the one the work was done under: never a later claim
    of the same key); without it, whoever holds the key. False if the key is not in flight under that
    claim (completed, released, purged, re-claimed)."""
    stored = _StoredResponse.of(
        status_code=status_code, content=content, body=body, media_type=media_type, headers=headers
    )
    return await _store(session, user_id=user_id, key=key, claim_token=claim_token, stored=stored)


async def release_in_flight(
    session: AsyncSession, *, user_id: uuid.UUID, key: str, claim_token: uuid.UUID | None = None
) -> bool:
    """Recovery hook: free an in-flight key whose work is known never to have happened (only the claim
    ``claim_token`` when given), in the caller's transaction."""
    k = IdempotencyKey
    conditions = [k.user_id == user_id, k.key == key, k.state == IN_FLIGHT]
    if claim_token is not None:
        conditions.append(k.claim_token == claim_token)
    result = await session.execute(delete(k).where(*conditions))
    if rowcount(result):
        IDEMPOTENCY_RELEASED.inc()
        return True
    return False


def _purge_statement(batch_size: int) -> Any:
    k = IdempotencyKey
    expired = (
        select(k.user_id, k.key)
        .where(k.expires_at <= func.now())
        .limit(batch_size)
        .with_for_update(skip_locked=True)  # several processes purge side by side; a re-claim wins
    )
    return delete(k).where(tuple_(k.user_id, k.key).in_(expired), k.expires_at <= func.now())


async def purge_expired(
    *,
    database: Database,
    batch_size: int = PURGE_BATCH_SIZE,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Delete expired keys in batches of at most ``batch_size`` rows, each batch one statement committed
    on its own (short locks, bounded work per statement), until none is left or ``should_stop()``."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    stmt = _purge_statement(batch_size)
    total = 0
    while True:
        async with database.own_transaction(single_statement=True) as session:
            deleted = rowcount(await session.execute(stmt))
        total += deleted
        IDEMPOTENCY_PURGED.inc(deleted)
        if deleted < batch_size or should_stop():
            return total
        await asyncio.sleep(0)  # let requests run between batches


# --------------------------------------------------------------------------------------
# The dependency
# --------------------------------------------------------------------------------------
def idempotency_key(*, owner: Callable[..., Any], takeover_after: float | None) -> params.Depends:
    """The ``Idempotency-Key`` dependency, for ``Annotated[IdempotencyRecord, idempotency_key(...)]``.

    ``owner``: a dependency returning the caller's user id (``uuid.UUID``); keys are per user.
    ``takeover_after``: seconds after which an in-flight claim counts as crashed and a retry may run
    the route again — only for routes whose every effect commits with ``complete``; ``None`` for
    routes with outside effects, whose recovery job finishes the key (module docstring).
    """
    if takeover_after is not None and takeover_after <= 0:
        raise ValueError("takeover_after must be positive seconds, or None")

    async def idempotency(
        request: Request,
        database: DatabaseDep,
        settings: SettingsDep,
        owner_id: Annotated[uuid.UUID, params.Depends(owner)],
        # Read by _validated_key (a missing or malformed key is the contract's 400, not a 422); the
        # document shows it as required, with the same rule.
        idempotency_key: Annotated[
            str | None,
            required_header(
                alias=HEADER,
                description="8–64 characters of [A-Za-z0-9_-], new for each new request; a retry "
                "with the same key and request gets the first answer again (Idempotent-Replayed: true).",
                pattern=f"^{KEY_PATTERN.pattern}$",
            ),
        ] = None,
    ) -> AsyncIterator[IdempotencyRecord]:
        key = _validated_key(request)
        if not isinstance(owner_id, uuid.UUID):
            raise TypeError(f"the idempotency owner dependency must return a uuid.UUID, not {owner_id!r}")
        fingerprint = request_fingerprint(
            method=request.method,
            route=route_template(request.scope),
            path_params=request.path_params,
            query=request.query_params.multi_items(),
            body=await request.body(),
        )
        claim_token = uuid.uuid4()
        row = await _claim(
            database,
            user_id=owner_id,
            key=key,
            fingerprint=fingerprint,
            claim_token=claim_token,
            ttl_seconds=settings.idempotency_ttl_seconds,
            takeover_after=takeover_after,
        )
        if not row.claimed:
            if row.fingerprint != fingerprint:
                IDEMPOTENCY_REQUESTS.labels("conflict").inc()
                message = "already used for a different request (method, route or body); use a new key"
                raise IdempotencyKeyReused(
                    f"This {HEADER} was already used for a different request; a new request needs a new key.",
                    errors=[{"field": _FIELD, "message": message}],
                )
            if row.state == COMPLETED:
                IDEMPOTENCY_REQUESTS.labels("replayed").inc()
                if row.response_status is None or row.response_body is None:  # completion sets both
                    raise RuntimeError(f"completed {HEADER} record without a stored response")
                response = _build_response(row.response_status, row.response_headers or [], row.response_body)
                response.headers[REPLAYED_HEADER] = "true"
                raise IdempotentReplay(response)
            IDEMPOTENCY_REQUESTS.labels("in_flight").inc()
            raise IdempotencyKeyInFlight(
                f"A request with this {HEADER} is still being processed; retry shortly to get its answer.",
                headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_SECONDS)},
            )
        IDEMPOTENCY_REQUESTS.labels("claimed").inc()
        record = IdempotencyRecord(
            user_id=owner_id, key=key, fingerprint=fingerprint, claim_token=claim_token
        )
        try:
            yield record
        except Exception:
            # Not BaseException: a cancelled request awaits nothing more; its row is recovered as a crash.
            if not record.kept:
                try:
                    await _release(database, record)
                except Exception as exc:  # the route's own error is the one to answer
                    log_exception(log, "could not release an idempotency claim", exc)
            raise
        if not (record.completed_flag or record.kept):
            log.error(
                "route returned without completing its idempotency record",
                extra={"route": route_template(request.scope)},
            )
            raise RuntimeError(
                "an idempotent route must return the Response of record.complete(...) (or call record.keep())"
            )

    return params.Depends(idempotency, scope="function")
