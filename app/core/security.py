"""Passwords (Argon2id) and access tokens (HS256 JWT): the primitives; the current user lives in ``app.auth.deps``.

Passwords
    Argon2id through argon2-cffi's ``PasswordHasher`` with explicit parameters
    (``ARGON2_*`` below, documented with their trade-off in docs/auth.md). Hashing and verification
    run in a small dedicated thread pool (argon2-cffi releases the GIL) at a lower CPU priority than
    the event loop, so the loop keeps serving while a login burst is being hashed; at most ``max_pending`` operations may wait per
    process, beyond that the request is shed with 503 + Retry-After instead of queueing for ever.
    Logins come first: a waiting login always runs before a waiting signup, and signups are shed once
    a quarter of ``max_pending`` is in use, so a signup flood can neither delay logins behind it nor
    make them answer 503.
    Passwords are NFKC-normalised before hashing (NIST SP 800-63B §5.1.1.2), so the same password
    typed on different keyboards/input methods verifies. A lookup for an unknown email verifies
    against a dummy hash made with the same parameters: the same Argon2 work as a wrong password.
    After a successful verification, ``needs_rehash`` tells the caller to re-hash with the current
    parameters (parameter upgrades happen as users log in).

Access tokens
    PyJWT, HS256 with ``JWT_SECRET``; claims ``sub`` (user id), ``iat``, ``exp``
    (``ACCESS_TOKEN_TTL_SECONDS``), ``jti``, ``iss`` and ``aud``. Decoding pins
    ``algorithms=["HS256"]`` (so ``alg: none``, HS512, RS256... are refused), requires every claim,
    and checks signature, expiry, issuer and audience. Any failure, or a token whose user no longer
    exists, is the same 401 problem+json with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import secrets
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from app.core.config import Settings
from app.core.errors import ServiceUnavailable, Unauthorized
from app.core.observability import PASSWORD_HASH_DURATION, PASSWORD_HASH_SHED

log = logging.getLogger("tradedesk.security")

T = TypeVar("T")

# --- Argon2id parameters (OWASP Password Storage Cheat Sheet, first option) -------------------------
# m = 19 MiB, t = 2, p = 1: ~20 ms per hash on one core of the reference box (see docs/auth.md for
# the trade-off against m = 64 MiB, t = 3, which costs ~150 ms there). Changing any of these makes
# check_needs_rehash() true for older hashes, which are then upgraded at the user's next login.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_COST_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
ARGON2_HASH_LEN = 32
ARGON2_SALT_LEN = 16
DEFAULT_MAX_PENDING = 256  # per process; beyond that, shed load (503) rather than queue for seconds
# Hashing threads run at a lower CPU priority than the event loop (Linux: nice is per thread), so when
# cores are saturated by a login burst the scheduler still runs the loop first: the API stays responsive
# and logins, slow by design, absorb the wait.
HASH_THREAD_NICENESS = 10

# --- JWT ----------------------------------------------------------------------------------------------
JWT_ALGORITHM = "HS256"
JWT_ISSUER = "tradedesk"
JWT_AUDIENCE = "tradedesk-api"
JWT_REQUIRED_CLAIMS = ("sub", "exp", "iat", "jti", "iss", "aud")
JWT_LEEWAY_SECONDS = 5  # clock skew between hosts; an expired token is refused at most 5 s late


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _lower_thread_priority() -> None:
    try:
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + HASH_THREAD_NICENESS)
        )
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass


def _prepare(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


class _PriorityGate:
    """At most ``slots`` holders at once; a freed slot goes to the oldest waiter of the most urgent class."""

    def __init__(self, slots: int, classes: int = 2) -> None:
        self._free = slots
        self._waiters: list[collections.deque[asyncio.Future[None]]] = [
            collections.deque() for _ in range(classes)
        ]

    async def acquire(self, urgency: int) -> None:
        if self._free > 0 and not any(self._waiters):
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[urgency].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed over just as we were cancelled: pass it on
            else:
                self._waiters[urgency].remove(future)
            raise

    def release(self) -> None:
        for queue in self._waiters:
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # the slot passes straight to this waiter
                    return
        self._free += 1


LOGIN, SIGNUP = 0, 1  # urgency classes of the hashing queue: lower runs first


class PasswordHashing:
    """Argon2id hashing off the event loop. One per process, built in the lifespan (``app.state.passwords``)."""

    def __init__(
        self,
        *,
        time_cost: int = ARGON2_TIME_COST,
        memory_cost: int = ARGON2_MEMORY_COST_KIB,
        parallelism: int = ARGON2_PARALLELISM,
        hash_len: int = ARGON2_HASH_LEN,
        salt_len: int = ARGON2_SALT_LEN,
        max_workers: int | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self.hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            hash_len=hash_len,
            salt_len=salt_len,
            type=Type.ID,
        )
        self.max_workers = max_workers or _default_workers()
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix="argon2", initializer=_lower_thread_priority
        )
        self._pending = 0
        self.max_pending_signups = max(1, max_pending // 4)
        self._gate = _PriorityGate(self.max_workers)
        # Same parameters as real hashes, so an unknown email costs exactly a wrong password's work.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(32))

    @property
    def parameters(self) -> str:
        h = self.hasher
        return f"argon2id m={h.memory_cost} KiB, t={h.time_cost}, p={h.parallelism}"

    async def _run(self, operation: str, fn: Callable[..., T], *args: Any, urgency: int = LOGIN) -> T:
        cap = self.max_pending if urgency == LOGIN else self.max_pending_signups
        if self._pending >= cap:
            log.warning(
                "password hashing queue full; shedding load",
                extra={"pending": self._pending, "for": "login" if urgency == LOGIN else "signup"},
            )
            PASSWORD_HASH_SHED.labels("login" if urgency == LOGIN else "signup").inc()
            raise ServiceUnavailable("The sign-in service is busy; retry shortly.", retry_after=1)
        self._pending += 1
        try:
            await self._gate.acquire(urgency)
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, _timed, operation, fn, *args)
            finally:
                self._gate.release()
        finally:
            self._pending -= 1

    async def hash(self, password: str, *, signup: bool = False) -> str:
        """A new Argon2id hash (random salt) of the NFKC-normalised password; ``signup`` queues it behind
        every login and sheds it first."""
        return await self._run(
            "hash", self.hasher.hash, _prepare(password), urgency=SIGNUP if signup else LOGIN
        )

    async def verify(self, stored_hash: str, password: str) -> tuple[bool, bool]:
        """(matches, needs_rehash). A malformed stored hash never matches (and is logged)."""
        return await self._run("verify", self._verify_sync, stored_hash, _prepare(password))

    async def verify_dummy(self, password: str) -> None:
        """The work of a failed verification, for an account that does not exist."""
        await self._run("verify", self._verify_sync, self._dummy_hash, _prepare(password))

    def _verify_sync(self, stored_hash: str, password: str) -> tuple[bool, bool]:
        try:
            self.hasher.verify(stored_hash, password)
        except VerifyMismatchError:
            return False, False
        except (InvalidHashError, VerificationError):
            log.error("stored password hash is malformed or unverifiable")
            return False, False
        return True, self.hasher.check_needs_rehash(stored_hash)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(operation: str, fn: Callable[..., T], *args: Any) -> T:
    start = time.perf_counter()
    try:
        return fn(*args)
    finally:
        PASSWORD_HASH_DURATION.labels(operation).observe(time.perf_counter() - start)


# --- access tokens ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int


def issue_access_token(*, user_id: uuid.UUID, settings: Settings, now: int | None = None) -> AccessToken:
    """A signed HS256 access token for the user, valid ``ACCESS_TOKEN_TTL_SECONDS``."""
    issued_at = int(time.time()) if now is None else now
    ttl = settings.access_token_ttl_seconds
    claims = {
        "sub": str(user_id),
        "iat": issued_at,
        "exp": issued_at + ttl,
        "jti": uuid.uuid4().hex,
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
    }
    token = jwt.encode(
        claims, settings.jwt_secret.get_secret_value(), algorithm=JWT_ALGORITHM, headers={"typ": "JWT"}
    )
    return AccessToken(token=token, expires_in=ttl)


class InvalidToken(Unauthorized):
    slug = "invalid-token"

    def __init__(self) -> None:
        super().__init__(
            "The access token is invalid or has expired; log in again.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def decode_access_token(token: str, *, settings: Settings) -> uuid.UUID:
    """The user id in a valid token; raise ``InvalidToken`` for anything else (no detail leaks)."""
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret.get_secret_value(),
            algorithms=[JWT_ALGORITHM],
            audience=JWT_AUDIENCE,
            issuer=JWT_ISSUER,
            leeway=JWT_LEEWAY_SECONDS,
            options={
                "require": list(JWT_REQUIRED_CLAIMS),
                "verify_signature": True,
                "verify_exp": True,
                "verify_iat": True,
                "verify_aud": True,
                "verify_iss": True,
            },
        )
        return uuid.UUID(str(claims["sub"]))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.info("access token refused", extra={"reason": type(exc).__name__})
        raise InvalidToken() from None
