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


@pytest.mark.parametrize("entry", ["uvicorn", "module"])
def test_startup_without_required_vars_exits_before_binding_and_names_all(entry: str, tmp_path: Path) -> None:
    port = _free_port()
    env = _clean_env(
        STRIPE_WEBHOOK_SECRET=BASE_ENV["STRIPE_WEBHOOK_SECRET"],
        TOKEN_ENCRYPTION_KEY=TEST_FERNET_KEY,
        PORT=str(port),
        PYTHONPATH=str(ROOT),
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
    with socket.socket() as s:  # nothing is listening: the port was never bound
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_wildcard_frontend_url_refused_at_startup(tmp_path: Path) -> None:
    env = _clean_env(**{**BASE_ENV, "FRONTEND_URL": "*", "PYTHONPATH": str(ROOT), "PORT": str(_free_port())})
    proc = subprocess.run([sys.executable, "-m", "app"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "FRONTEND_URL" in proc.stderr and "wildcard" in proc.stderr
    assert "supersecretpw" not in proc.stderr


@pytest.mark.parametrize(
    "value", ["*", "", " , ", "localhost:3000", "http://a.com/path", "ftp://a.com", "http://*.a.com", "https://a.com,*"]
)
def test_frontend_url_must_be_origins(value: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        make_settings("postgresql://x@127.0.0.1/db", frontend_url=value)
    assert "FRONTEND_URL" in exc.value.problems


def test_frontend_url_list_is_normalised() -> None:
    s = make_settings("postgresql://x@127.0.0.1/db", frontend_url="https://a.example.com, http://localhost:3000/")
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
        "DATABASE_URL", "FRONTEND_URL", "JWT_SECRET", "STRIPE_WEBHOOK_SECRET", "TOKEN_ENCRYPTION_KEY",
        "RATE_LIMIT_LOGIN", "DB_POOL_SIZE", "TRUSTED_PROXIES",
    }
    message = str(exc.value)
    for secret in ("hunter2hunter2", "short-secret-value", "sk_live_notawebhooksecret", "not-a-fernet-key"):
        assert secret not in message


def test_rotation_lists_are_accepted() -> None:
    s = make_settings("postgresql://x@127.0.0.1/db", stripe_webhook_secret="whsec_aaaaaaaaaa, whsec_bbbbbbbbbb",
                      token_encryption_key=f"{TEST_FERNET_KEY},{TEST_FERNET_KEY}")
    assert s.stripe_webhook_secrets == ["whsec_aaaaaaaaaa", "whsec_bbbbbbbbbb"]
    assert len(s.token_encryption_keys) == 2


def test_database_url_normalised_to_asyncpg_and_secret_hidden_in_repr() -> None:
    s = make_settings("postgresql://u:pw-secret@127.0.0.1:5432/db")
    assert s.sqlalchemy_database_url.startswith("postgresql+asyncpg://")
    assert "pw-secret" not in repr(s)


def test_https_required_in_production() -> None:
    with pytest.raises(ConfigurationError) as exc:
        make_settings("postgresql://x@127.0.0.1/db", app_env="production", frontend_url="http://a.example.com")
    assert "https" in exc.value.problems["FRONTEND_URL"]


def test_env_example_documents_every_setting() -> None:
    from app.core.config import Settings

    text = (ROOT / ".env.example").read_text()
    for field in Settings.model_fields:
        assert field.upper() in text, f"{field.upper()} missing from .env.example"
