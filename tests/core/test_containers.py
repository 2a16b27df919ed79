"""Docker is not available here: parse the Dockerfile and compose file and check the essentials."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert len(stages) >= 2, "multi-stage build expected"
    assert all("slim" in image for image, _ in stages)
    assert re.search(r"^COPY --from=build", text, flags=re.M)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*healthz", text, flags=re.M | re.S)
    assert '"-m", "app"' in text  # config validated before binding
    assert "migrations" in text and "alembic.ini" in text


def test_compose_has_app_migrate_postgres_redis_with_healthchecks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"app", "migrate", "postgres", "redis"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    command = services["redis"]["command"]  # bounded memory; evict only keys that expire (docs/outbound.md)
    assert command[command.index("--maxmemory-policy") + 1] == "volatile-lru" and "--maxmemory" in command
    for name in ("postgres", "redis", "app"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    deps = services["app"]["depends_on"]
    assert deps["postgres"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    for name in ("app", "migrate"):
        assert services[name]["env_file"] == ".env"
        env = services[name]["environment"]
        assert (
            env["DATABASE_URL"].startswith("postgresql+asyncpg://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
    assert services["app"]["environment"]["REDIS_URL"].startswith("redis://redis:6379")


def test_env_and_secrets_never_enter_the_image_or_repo() -> None:
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_multiworker_metrics_dir_is_set_writable_and_a_tmpfs_in_compose() -> None:
    """WEB_CONCURRENCY > 1: every worker writes to PROMETHEUS_MULTIPROC_DIR so /metrics aggregates them."""
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :]  # the final stage is the image that runs
    env = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", runtime)
    assert env, "PROMETHEUS_MULTIPROC_DIR must be set in the runtime stage"
    path = env.group(1)
    # The directory exists in the image and belongs to the non-root user the image runs as.
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)[-1].split(":")[0]
    created = re.search(rf"install -d -o {user} -g \d+ -m 07\d\d {re.escape(path)}\b", runtime)
    assert created, f"{path} must be created for uid {user}"

    app = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["app"]
    assert app["environment"]["PROMETHEUS_MULTIPROC_DIR"] == path
    mounts = [m.split(":", 1) for m in app["tmpfs"]]
    options = dict(mounts)[path].split(",")  # a fresh tmpfs per container
    assert "mode=1777" in options or any(o.startswith("uid=") for o in options), "the app user must write it"


def test_the_backtest_spool_is_a_named_volume_owned_by_the_app_user() -> None:
    """Uploaded backtest files must survive a restart of the container, so its jobs can resume."""
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM ") :]
    env = re.search(r"BACKTEST_SPOOL_DIR=(\S+)", runtime)
    assert env, "BACKTEST_SPOOL_DIR must be set in the runtime stage"
    path = env.group(1)
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.M)[-1].split(":")[0]
    assert re.search(rf"install -d -o {user} -g \d+ -m 07\d\d {re.escape(path)}\b", runtime)

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    app = compose["services"]["app"]
    volumes = dict(v.split(":", 1) for v in app["volumes"])
    name = next(source for source, target in volumes.items() if target == path)
    assert name in compose["volumes"], "a named volume, not the container's own layer"
    assert app.get("hostname"), "a fixed hostname: jobs are run by a process on the host holding their file"
