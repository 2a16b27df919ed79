"""Settings: one validated object, read once at startup.

A missing or malformed required value stops the process before it serves, with one
message that names every offending variable as it is spelled in the environment.
Secret values never appear in that message or in logs.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import sys
from functools import cached_property
from typing import Literal
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from limits import parse as parse_limit
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

POSTGRES_SCHEMES = ("postgresql+asyncpg", "postgresql", "postgres")


def normalize_database_url(url: str, *, driver: Literal["asyncpg"] | None = "asyncpg") -> str:
    """The one place a PostgreSQL URL is rewritten: ``postgres://``, ``postgresql://`` or
    ``postgresql+asyncpg://`` in; ``postgresql+asyncpg://`` out for SQLAlchemy, or with ``driver=None``
    ``postgresql://`` for asyncpg and libpq tools. ``ValueError`` for any other scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in POSTGRES_SCHEMES:
        raise ValueError("must be a PostgreSQL URL: postgresql+asyncpg://user:pass@host:port/db")
    return f"postgresql+{driver}://{rest}" if driver else f"postgresql://{rest}"


def _split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _origin_of(value: str) -> str:
    """Return the value as a bare origin (scheme://host[:port]) or raise ValueError."""
    if value == "*" or "*" in value:
        raise ValueError("a wildcard origin is refused; list the exact front-end origins")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin (expected scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r} is not an origin: no path, query, fragment or credentials allowed")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class Settings(BaseSettings):
    """Every environment variable the service reads (contract §2)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        hide_input_in_errors=True,
    )

    # --- required -----------------------------------------------------------------
    database_url: SecretStr
    frontend_url: str
    jwt_secret: SecretStr
    stripe_webhook_secret: SecretStr
    token_encryption_key: SecretStr

    # --- optional -----------------------------------------------------------------
    app_env: Literal["development", "test", "production"] = "development"
    redis_url: SecretStr | None = None
    web_concurrency: int = Field(default=1, ge=1)
    # `reuseport`: one listening socket per worker, connections hashed over them by the kernel
    # (app/supervisor.py); `shared`: uvicorn's single socket. Only matters with WEB_CONCURRENCY > 1.
    web_worker_sockets: Literal["reuseport", "shared"] = "reuseport"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    broker_provider: Literal["paper", "alpaca"] = "paper"
    alpaca_api_base_url: str = "https://paper-api.alpaca.markets"
    alpaca_data_base_url: str = "https://data.alpaca.markets"
    market_data_provider: Literal["synthetic", "alpaca"] = "synthetic"
    alpaca_api_key_id: str | None = None
    alpaca_api_secret_key: SecretStr | None = None
    alpaca_oauth_authorize_url: str = "https://app.alpaca.markets/oauth/authorize"
    alpaca_oauth_token_url: str = "https://api.alpaca.markets/oauth/token"
    alpaca_oauth_client_id: str | None = None
    alpaca_oauth_client_secret: SecretStr | None = None
    alpaca_oauth_redirect_uri: str | None = None
    # `local`: an in-process OAuth server for development (app/providers/oauth.py); refused in production.
    broker_oauth_provider: Literal["alpaca", "local"] = "alpaca"
    discord_api_base_url: str = "https://discord.com/api"

    http_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    broker_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    breaker_fail_max: int = Field(default=5, ge=1, le=1000)
    breaker_reset_seconds: float = Field(default=60.0, gt=0, le=3600)

    rate_limit_login: str = "5/minute"
    rate_limit_signup: str = "20/hour"
    rate_limit_orders: str = "60/minute"
    rate_limit_alerts: str = "30/minute"  # per user, on POST /v1/alerts/discord
    rate_limit_tools: str = "120/minute"  # per user, on POST /v1/tools/{name}/execute (and MCP tools/call)
    rate_limit_backtests: str = "30/hour"  # per user, on POST /v1/backtests (uploads)
    rate_limit_default: str = "600/minute"
    # One key (IP, /64, user id, email pseudonym) refused this many times by one limit within the window
    # is an offender: rate_limit_offenders_total{limit} and one warning log line naming the key, once per
    # window (app/core/ratelimit.py). Counted on the refusal path only, shared through Redis when set.
    rate_limit_offender_threshold: int = Field(default=20, ge=1, le=1_000_000)
    rate_limit_offender_window_seconds: int = Field(default=300, ge=10, le=86400)

    market_data_cache_seconds: int = Field(default=300, ge=1, le=86400)
    idempotency_ttl_seconds: int = Field(default=86400, ge=60, le=30 * 86400)
    reconcile_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    reconcile_grace_seconds: float = Field(default=30.0, gt=0, le=86400)
    # The Discord dispatcher: the first retry's pause (doubled per attempt, with jitter, capped at 5 min),
    # and its own cap on sends per second across every process (Discord's global limit is 50/s).
    alert_retry_base_seconds: float = Field(default=2.0, gt=0, le=300)
    alert_dispatch_rate: str = "40/second"
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=100 * 1_048_576)
    tool_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # The tool sandbox: worker processes, each one's address-space cap, and how many calls may wait for a
    # free worker before the next is answered 503 (app/tools/sandbox.py).
    tool_workers: int = Field(default=2, ge=1, le=64)
    tool_memory_mb: int = Field(default=1024, ge=128, le=65536)
    tool_max_waiting: int = Field(default=16, ge=0, le=10_000)
    # POST /v1/tools/{name}/execute has its own body cap: a batch of 10,000 options (the contract's
    # largest) is about 1.1 MB of JSON, over the default MAX_BODY_BYTES; and an over-long argument (a 10 MB
    # string) should be refused by the schema, naming the argument, rather than by size.
    tool_max_body_bytes: int = Field(default=16 * 1_048_576, ge=1024, le=100 * 1_048_576)

    # Backtest jobs on uploaded CSV (app/backtests/): the upload's own cap (exempt from MAX_BODY_BYTES),
    # where uploads are spooled (default: <system temp dir>/tradedesk-backtests), the job sandbox's size,
    # memory cap and wall-clock limit per job (validation and the run each), how many unfinished jobs one
    # user may have, and the lease a running job holds (a job whose server died is resumed once it expires).
    backtest_max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024, le=1024**4)
    backtest_spool_dir: str = ""
    backtest_workers: int = Field(default=1, ge=1, le=64)
    backtest_memory_mb: int = Field(default=1536, ge=256, le=65536)
    backtest_timeout_seconds: float = Field(default=900.0, gt=0, le=86400)
    backtest_max_active_per_user: int = Field(default=3, ge=1, le=1000)
    backtest_lease_seconds: float = Field(default=30.0, ge=1, le=3600)

    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=5, ge=0, le=200)
    db_pool_timeout: float = Field(default=5.0, gt=0, le=120)
    # Server-side, on every pooled connection: PostgreSQL itself cancels a statement that runs longer,
    # and ends a session left idle inside a transaction (which would hold its locks and connection).
    db_statement_timeout_seconds: float = Field(default=30.0, ge=0.05, le=3600)
    db_idle_in_transaction_timeout_seconds: float = Field(default=60.0, ge=0.05, le=3600)
    # Prepared statements kept per pooled connection, by asyncpg and by SQLAlchemy's asyncpg adapter (both
    # default to 100). 0 turns both caches off and names every prepared statement uniquely: for PgBouncer
    # in transaction mode without max_prepared_statements (docs/scaling.md).
    db_statement_cache_size: int = Field(default=100, ge=0, le=10000)

    stripe_webhook_enabled: bool = True
    trusted_proxies: str = ""
    # An emergency block (runbook: rate-limit attack): clients in these networks get 403 on every route.
    blocked_networks: str = ""
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86400)

    # Optional error tracking (app/core/errortracking.py): unset, nothing is initialised.
    sentry_dsn: SecretStr | None = None
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)

    # --- validators ---------------------------------------------------------------
    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        normalize_database_url(raw)  # ValueError for anything but a PostgreSQL URL
        if not urlsplit(raw).hostname and "host=" not in raw:
            raise ValueError("has no host")
        return SecretStr(raw)

    @field_validator("frontend_url")
    @classmethod
    def _check_frontend_url(cls, value: str) -> str:
        items = _split_csv(value)
        if not items:
            raise ValueError("must list at least one origin (comma-separated); '*' is refused")
        return ",".join(_origin_of(item) for item in items)

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if len(raw) < 32:
            raise ValueError(
                "must be at least 32 characters (generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if raw.lower() in {"changeme" * 4, "change-me" * 4} or len(set(raw)) < 8:
            raise ValueError("looks like a placeholder; generate a random secret")
        return value

    @field_validator("stripe_webhook_secret")
    @classmethod
    def _check_stripe_secret(cls, value: SecretStr) -> SecretStr:
        items = _split_csv(value.get_secret_value())
        if not items or any(not s.startswith("whsec_") or len(s) < 12 for s in items):
            raise ValueError("must be one or more comma-separated 'whsec_…' secrets")
        return SecretStr(",".join(items))

    @field_validator("token_encryption_key")
    @classmethod
    def _check_fernet_keys(cls, value: SecretStr) -> SecretStr:
        items = _split_csv(value.get_secret_value())
        if not items:
            raise ValueError("must be one or more comma-separated Fernet keys")
        for position, key in enumerate(items, start=1):
            try:
                Fernet(key.encode())
            except Exception:
                raise ValueError(
                    f"key #{position} is not a Fernet key (32 url-safe base64-encoded bytes; "
                    "generate: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
                ) from None
        return SecretStr(",".join(items))

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        if urlsplit(raw).scheme not in ("redis", "rediss"):
            raise ValueError("must be a redis:// or rediss:// URL")
        return SecretStr(raw)

    @field_validator("sentry_dsn")
    @classmethod
    def _check_sentry_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.username or not parts.path.strip("/"):
            raise ValueError("must be a Sentry DSN: https://<public key>@<host>/<project id>")
        return SecretStr(raw)

    @field_validator(
        "rate_limit_login",
        "rate_limit_signup",
        "rate_limit_orders",
        "rate_limit_alerts",
        "rate_limit_tools",
        "rate_limit_backtests",
        "alert_dispatch_rate",
        "rate_limit_default",
    )
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        try:
            parse_limit(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate limit (examples: '5/minute', '600/minute', '10/second')"
            ) from None
        return value

    @field_validator("trusted_proxies", "blocked_networks")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        for item in _split_csv(value):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return ",".join(_split_csv(value))

    @field_validator(
        "alpaca_api_base_url",
        "alpaca_data_base_url",
        "alpaca_oauth_authorize_url",
        "alpaca_oauth_token_url",
        "discord_api_base_url",
    )
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.app_env == "production":
            insecure = [o for o in self.frontend_origins if o.startswith("http://")]
            if insecure:
                raise ValueError("FRONTEND_URL: every origin must use https when APP_ENV=production")
            if self.broker_oauth_provider == "local":
                raise ValueError(
                    "BROKER_OAUTH_PROVIDER: local links no real account; refused when APP_ENV=production"
                )
        return self

    # --- derived values -------------------------------------------------------------
    def derived_key(self, label: str) -> bytes:
        """A server-side key for one purpose, derived from JWT_SECRET under its own label (HMAC-SHA256),
        so no purpose ever uses the token-signing key itself. Rotating JWT_SECRET rotates them all."""
        return hmac.new(self.jwt_secret.get_secret_value().encode(), label.encode(), hashlib.sha256).digest()

    @cached_property
    def pseudonym_key(self) -> bytes:
        """The key that turns identifiers (emails) into rate-limit keys and log fields."""
        return self.derived_key("tradedesk/pseudonym/v1")

    @cached_property
    def frontend_origins(self) -> list[str]:
        return _split_csv(self.frontend_url)

    @cached_property
    def sqlalchemy_database_url(self) -> str:
        return normalize_database_url(self.database_url.get_secret_value())

    @cached_property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in _split_csv(self.trusted_proxies)]

    @cached_property
    def blocked_network_list(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(item, strict=False) for item in _split_csv(self.blocked_networks)]

    @cached_property
    def stripe_webhook_secrets(self) -> list[str]:
        return _split_csv(self.stripe_webhook_secret.get_secret_value())

    @cached_property
    def token_encryption_keys(self) -> list[str]:
        return _split_csv(self.token_encryption_key.get_secret_value())


class ConfigurationError(Exception):
    """Raised with a message naming every offending environment variable."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        lines = [f"  {name}: {reason}" for name, reason in sorted(problems.items())]
        super().__init__(
            f"Invalid configuration: {len(problems)} environment variable(s) need attention:\n"
            + "\n".join(lines)
            + "\nSee .env.example for every variable and its format."
        )


def _problems_from(error: ValidationError) -> dict[str, str]:
    problems: dict[str, str] = {}
    for item in error.errors(include_input=False, include_url=False):
        loc = item.get("loc") or ()
        name = str(loc[0]).upper() if loc else "CONFIGURATION"
        if item.get("type") == "missing":
            reason = "missing (required)"
        else:
            reason = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc and ": " in reason and reason.split(": ", 1)[0].isupper():
            name, reason = reason.split(": ", 1)  # a cross-field rule naming its variable
        problems.setdefault(name, reason)
    return problems


def load_settings(**overrides: object) -> Settings:
    """Build and validate Settings; raise ConfigurationError naming every bad variable."""
    try:
        # Overrides are validated (and coerced) by pydantic, so they are typed as plain objects here.
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(_problems_from(exc)) from None


def load_settings_or_exit() -> Settings:
    """For process entry points: print one message and exit 2 before anything binds a port."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
