"""Configuration is validated at startup: all problems named at once, secrets never echoed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.config import ConfigurationError, load_settings
from tests.support.settings import TEST_FERNET_KEY, make_settings

ROOT = Path(__file__).resolve().parents[2]
BASE_ENV = {
    "DATABASE_URL": "postgresql+asyncpg://u:supersecretpw@127.0.0.1:5432/db",
    "FRONTEND_URL": "http://localhost:3000",
    "JWT_SECRET": "a-very-long-and-random-jwt-secret-value-123456",
    "STRIPE_WEBHOOK_SECRET": "whsec_abcdefghijklmnop",
    "TOKEN_ENCRYPTION_KEY": TEST_FERNET_KEY,
}


def _clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in BASE_ENV and k not in ("REDIS_URL", "APP_ENV")}
    env.update(values)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loaded by the child interpreter (``sitecustomize`` on its PYTHONPATH): logs the port of every socket
# bind the child attempts (asyncio's and uvloop's create_server both bind through socket.socket.bind),
# so a test sees whether the port was ever bound while the child ran.
_BIND_SPY = """
import os
import socket

_log = os.environ["BIND_SPY_LOG"]
with open(_log, "a") as f:
    f.write("loaded\\n")
_bind = socket.socket.bind


def bind(self, address):
    with open(_log, "a") as f:
        f.write(f"bind {address[1] if isinstance(address, tuple) else address}\\n")
    return _bind(self, address)


socket.socket.bind = bind
"""


def _bind_spy(tmp_path: Path) -> tuple[Path, Path]:
    """A directory to put first on the child's PYTHONPATH, and the log its spy writes."""
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(_BIND_SPY)
    return spy_dir, tmp_path / "binds.log"


@pytest.mark.parametrize("entry", ["uvicorn", "module"])
def test_startup_without_required_vars_exits_before_binding_and_names_all(entry: str, tmp_path: Path) -> None:
    port = _free_port()
    spy_dir, spy_log = _bind_spy(tmp_path)
    env = _clean_env(
        STRIPE_WEBHOOK_SECRET=BASE_ENV["STRIPE_WEBHOOK_SECRET"],
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        PORT=str(port),
        PYTHONPATH=os.pathsep.join([str(spy_dir), str(ROOT)]),
        BIND_SPY_LOG=str(spy_log),
    )
    cmd = (
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)]
        if entry == "uvicorn"
        else [sys.executable, "-m", "app"]
    )
    # Run from an empty directory so no developer .env is picked up.
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    for name in ("DATABASE_URL", "FRONTEND_URL", "JWT_SECRET"):
        assert name in proc.stderr, proc.stderr
    assert "Uvicorn running" not in proc.stderr
    # The spy was active in the child, and the child never bound the port: it exited before binding.
    # (A bind to port 0 is urllib3's IPv6 probe at import; a serving child logs "bind <port>".)
    loaded, *binds = spy_log.read_text().splitlines()
    assert loaded == "loaded"
    assert f"bind {port}" not in binds, binds


def test_wildcard_frontend_url_refused_at_startup(tmp_path: Path) -> None:
    env = _clean_env(**{**BASE_ENV, "FRONTEND_URL": "*", "PYTHONPATH": str(ROOT), "PORT": str(_free_port())})
    proc = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "FRONTEND_URL" in proc.stderr and "wildcard" in proc.stderr
    assert "supersecretpw" not in proc.stderr


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "",
        " , ",
        "localhost:3000",
        "http://a.com/path",
        "ftp://a.com",
        "http://*.a.com",
        "https://a.com,*",
    ],
)
def test_frontend_url_must_be_origins(value: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        make_settings("postgresql://x@127.0.0.1/db", frontend_url=value)
    assert "FRONTEND_URL" in exc.value.problems


def test_frontend_url_list_is_normalised() -> None:
    s = make_settings(
        "postgresql://x@127.0.0.1/db", frontend_url="https://a.example.com, http://localhost:3000/"
    )
    assert s.frontend_origins == ["https://a.example.com", "http://localhost:3000"]


def test_all_problems_reported_at_once_without_secret_values() -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings(
            _env_file=None,
            database_url="mysql://root:hunter2hunter2@db/x",
            frontend_url="*",
            jwt_secret="short-secret-value",
            stripe_webhook_secret="sk_live_notawebhooksecret",
            token_encryption_key="not-a-fernet-key",
            rate_limit_login="five per minute",
            db_pool_size="zero",
            trusted_proxies="10.0.0.0/8,not-an-ip",
        )
    problems = exc.value.problems
    assert set(problems) >= {
        "DATABASE_URL",
        "FRONTEND_URL",
        "JWT_SECRET",
        "STRIPE_WEBHOOK_SECRET",
        "TOKEN_ENCRYPTION_KEY",
        "RATE_LIMIT_LOGIN",
        "DB_POOL_SIZE",
        "TRUSTED_PROXIES",
    }
    message = str(exc.value)
    for secret in ("hunter2hunter2", "short-secret-value", "sk_live_notawebhooksecret", "not-a-fernet-key"):
        assert secret not in message


def test_rotation_lists_are_accepted() -> None:
    s = make_settings(
        "postgresql://x@127.0.0.1/db",
        stripe_webhook_secret="whsec_aaaaaaaaaa, whsec_bbbbbbbbbb",
        token_encryption_key=f"{TEST_FERNET_KEY},{TEST_FERNET_KEY}",
    )
    assert s.stripe_webhook_secrets == ["whsec_aaaaaaaaaa", "whsec_bbbbbbbbbb"]
    assert len(s.token_encryption_keys) == 2


def test_database_url_normalised_to_asyncpg_and_secret_hidden_in_repr() -> None:
    s = make_settings("postgresql://u:pw-secret@127.0.0.1:5432/db")
    assert s.sqlalchemy_database_url.startswith("postgresql+asyncpg://")
    assert "pw-secret" not in repr(s)


def test_https_required_in_production() -> None:
    with pytest.raises(ConfigurationError) as exc:
        make_settings(
            "postgresql://x@127.0.0.1/db", app_env="production", frontend_url="http://a.example.com"
        )
    assert "https" in exc.value.problems["FRONTEND_URL"]


def test_env_example_documents_every_setting() -> None:
    from app.core.config import Settings

    text = (ROOT / ".env.example").read_text()
    for field in Settings.model_fields:
        assert field.upper() in text, f"{field.upper()} missing from .env.example"
