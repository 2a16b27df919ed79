"""LOG_LEVEL=DEBUG (the payment-webhook runbook's "enable enhanced logging") must not log secrets:
a real server at DEBUG serves a signup, a login and an authenticated call, and its whole output is
searched for the email, the password, its Argon2 hash and the access token (the runbook promises
this; SQLAlchemy's statement and row logging and httpx's URLs are what would break it)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.support.cli import cli_env
from tests.support.servers import Servers


async def test_debug_logging_shows_no_secret_of_a_signup_and_login(database_url: str, tmp_path: Path) -> None:
    servers = Servers(cli_env(database_url, LOG_LEVEL="DEBUG"), tmp_path)
    email = f"debug-{uuid.uuid4().hex[:10]}@example.com"
    password = f"pw-{uuid.uuid4().hex}"
    try:
        with servers.diagnosed():
            server = await servers.start()
            http = server.http
            assert (
                await http.post("/v1/auth/signup", json={"email": email, "password": password})
            ).status_code == 201
            login = await http.post("/v1/auth/login", json={"email": email, "password": password})
            token = login.json()["access_token"]
            me = await http.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
            await servers.terminate(server)
            log = server.log_path.read_text(errors="replace")
            assert log.count("\n") >= 3, log  # the access log at least: it did log
            for secret in (email, password, token, "$argon2", email.split("@")[0]):
                assert secret not in log, f"{secret[:12]}... appears in the DEBUG log"
    finally:
        await servers.stop_all()
