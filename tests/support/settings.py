from __future__ import annotations

from typing import Any

from cryptography.fernet import Fernet

from app.core.config import Settings, load_settings

TEST_FERNET_KEY = Fernet.generate_key().decode()
TEST_JWT_SECRET = "test-jwt-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
TEST_WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "frontend_url": "http://localhost:3000",
        "jwt_secret": TEST_JWT_SECRET,
        "stripe_webhook_secret": TEST_WEBHOOK_SECRET,
        "token_encryption_key": TEST_FERNET_KEY,
        "app_env": "test",
        "log_level": "WARNING",
    }
    values.update(overrides)
    return load_settings(_env_file=None, **values)
