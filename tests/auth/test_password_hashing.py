"""app.core.security.PasswordHashing: Argon2id parameters, verification outcomes, re-hash detection,
hashing off the event loop, and load shedding when too many hashes are queued."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from argon2 import PasswordHasher, extract_parameters

from app.core.errors import ServiceUnavailable
from app.core.security import (
    ARGON2_HASH_LEN,
    ARGON2_MEMORY_COST_KIB,
    ARGON2_PARALLELISM,
    ARGON2_SALT_LEN,
    ARGON2_TIME_COST,
    HASH_THREAD_NICENESS,
    PasswordHashing,
)

WEAK = {"time_cost": 1, "memory_cost": 8 * 1024, "parallelism": 1}


@pytest.fixture
def hashing():
    h = PasswordHashing()
    yield h
    h.close()


async def test_hash_uses_the_documented_argon2id_parameters(hashing: PasswordHashing) -> None:
    encoded = await hashing.hash("correct horse battery staple")
    params = extract_parameters(encoded)
    assert encoded.startswith("$argon2id$v=19$")
    assert (params.time_cost, params.memory_cost, params.parallelism) == (
        ARGON2_TIME_COST,
        ARGON2_MEMORY_COST_KIB,
        ARGON2_PARALLELISM,
    )
    assert (params.hash_len, params.salt_len) == (ARGON2_HASH_LEN, ARGON2_SALT_LEN)
    assert extract_parameters(hashing._dummy_hash) == params
    # Random salt: the same password never hashes the same twice.
    assert await hashing.hash("correct horse battery staple") != encoded


async def test_verify_outcomes(hashing: PasswordHashing) -> None:
    encoded = await hashing.hash("correct horse battery staple")
    assert await hashing.verify(encoded, "correct horse battery staple") == (True, False)
    assert await hashing.verify(encoded, "Correct horse battery staple") == (False, False)
    legacy = PasswordHasher(**WEAK).hash("correct horse battery staple")
    assert await hashing.verify(legacy, "correct horse battery staple") == (True, True)
    assert await hashing.verify(legacy, "wrong") == (False, False)
    # A corrupt stored hash is a failed login, not a 500.
    for broken in ("", "not-a-hash", "$argon2id$v=19$m=19456,t=2,p=1$AAAA$BBBB", "$2b$12$" + "a" * 53):
        assert await hashing.verify(broken, "correct horse battery staple") == (False, False)
    await hashing.verify_dummy("anything at all")  # never raises, never matches


async def test_hashing_does_not_block_the_event_loop(hashing: PasswordHashing) -> None:
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    await asyncio.gather(*(hashing.hash(f"password number {i}") for i in range(4)))
    running = False
    await task
    # Had Argon2 run on the loop thread, the ticker could not have run while the hashes were computed.
    assert ticks - start > 50


async def test_queue_beyond_max_pending_is_shed_with_503() -> None:
    hashing = PasswordHashing(**WEAK, max_workers=1, max_pending=2)
    try:
        results = await asyncio.gather(*(hashing.hash(f"pw {i}") for i in range(10)), return_exceptions=True)
        shed = [r for r in results if isinstance(r, ServiceUnavailable)]
        done = [r for r in results if isinstance(r, str)]
        assert len(done) == 2 and len(shed) == 8
        assert shed[0].status == 503 and shed[0].headers["Retry-After"] == "1"
        # The slots are released: full capacity is back once the queue has drained.
        assert hashing._pending == 0
        assert all(isinstance(r, str) for r in await asyncio.gather(hashing.hash("a"), hashing.hash("b")))
    finally:
        hashing.close()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux behaviour")
async def test_hash_threads_run_below_the_event_loop_priority(hashing: PasswordHashing) -> None:
    loop_thread = threading.get_native_id()
    before = os.getpriority(os.PRIO_PROCESS, loop_thread)
    await hashing.hash("warm the pool up")
    in_pool = await asyncio.get_running_loop().run_in_executor(
        hashing._executor, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert in_pool == min(19, before + HASH_THREAD_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, loop_thread) == before  # the loop thread is untouched
