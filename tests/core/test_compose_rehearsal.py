"""`docker compose up`, rehearsed on a machine without Docker (tests/support/rehearsal.py does the work).

The parse checks in test_containers.py read the Dockerfile and compose file; this module performs them, so a
file the build stage forgot to COPY, a wrong command or a directory the image's user cannot write fails here
before it fails in someone's `docker compose up`:

1. Build stage: only what its COPY lines name is copied (through .dockerignore) into a fresh directory, then
   its RUN lines run there: ``python -m venv``, ``pip install --upgrade pip && pip install .`` into a fresh
   virtualenv with the stage's ENV (``PIP_NO_CACHE_DIR=1``). This is the real install, with full dependency
   resolution from the package index this host is configured with (its PIP_* settings and pip.conf stand
   in for the image's network), not the dev venv: a wheelhouse would save little, the index is already
   local and the time goes into unpacking ~600 MB. One change: ``PIP_COMPILE=0``. Measured here (2 shared
   cores): the stage's pip lines took 90 s with byte-compilation and 63 s without under load; a whole build
   stage 97 s with it and 21-45 s without. After the build, the modules the processes
   import (IMPORTED) are compiled once, as pip would have, so each process starts as fast as in the image
   (PYTHONDONTWRITEBYTECODE stops them writing their own): the file set differs only by unused .pyc
   files. So the runtime below has exactly the runtime dependencies of pyproject.toml: none of the dev
   extras (pytest, pyarrow, pgserver, ...) unless a runtime dependency itself pulls them in.
2. Runtime stage: a fresh ``/`` with only the COPY --from=build venv and the files its COPY lines bring into
   WORKDIR; its ENV; the directories of its ``install -d -o ...`` lines, same owner and mode; then, as uid
   10001 (USER, through setpriv), compose's ``migrate`` command and the image's CMD with the app service's
   environment (image ENV < env_file < environment, from a .env filled in from .env.example; the
   ``@postgres``/``redis://redis`` URLs pointed at a scratch database and the test Redis). The Dockerfile's
   HEALTHCHECK and compose's app healthcheck, as written (only the port moved if 8000 is taken here), must
   pass within the time Docker would allow; /readyz answers 200 with the migrations at head; /metrics, /docs
   and /redoc with their same-origin assets (package data) answer 200; SIGTERM stops the server within
   compose's 10 s grace.
3. Variants of the Dockerfile (a runtime COPY removed, a wrong CMD) and small ones for the helper's rules
   (a source missing from the context or .dockerignored, a RUN command that is not safe on a host) must fail
   with a message naming the cause: the rehearsal can fail.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from tests.support import db as dbsupport
from tests.support.rehearsal import (
    Compose,
    Rehearsal,
    RehearsalError,
    ignored,
    interpolate,
    local_url,
    operator_dotenv,
    parse_dotenv,
    up,
    with_port,
    workspace,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# What the server, its workers and sandboxes, the migrations and the healthcheck import (byte_compile).
IMPORTED = ["app.__main__", "app.main", "app.tools.functions", "app.backtests.functions", "alembic.config"]
IMPORTED += ["alembic.command", "urllib.request"]


@pytest.fixture(scope="module")
def rehearsal() -> Iterator[Rehearsal]:
    """The Dockerfile's build stage performed once for the module (the slow part: a real ``pip install .``)."""
    path = workspace()
    try:
        built = Rehearsal(ROOT, path)
        built.build()
        with built.runtime() as runtime:
            runtime.byte_compile(IMPORTED)
        yield built
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scratch_database() -> Iterator[str]:
    name, url = asyncio.run(dbsupport.create_database("tradedesk_compose"))
    try:
        yield url
    finally:
        asyncio.run(dbsupport.drop_database(name))


@pytest.fixture
def stand_ins(scratch_database: str, require_redis: str) -> dict[str, str]:
    """Compose service name -> the local server standing for it."""
    return {"postgres": scratch_database, "redis": require_redis}


def operator_compose() -> Compose:
    return Compose.read(ROOT / "docker-compose.yml", operator_dotenv((ROOT / ".env.example").read_text()))


def alembic_version(url: str) -> list[str]:
    async def query() -> list[str]:
        conn = await asyncpg.connect(dbsupport.asyncpg_dsn(url))
        try:
            return [row[0] for row in await conn.fetch("SELECT version_num FROM alembic_version")]
        finally:
            await conn.close()

    return asyncio.run(query())


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, flags=re.M).group(1))  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.redis
def test_compose_up_migrates_serves_is_healthy_and_stops(
    rehearsal: Rehearsal, stand_ins: dict[str, str]
) -> None:
    compose = operator_compose()
    with rehearsal.runtime() as runtime, up(runtime, compose, "app", stand_ins) as app:
        user = runtime.state.user
        assert user.uid != 0 and uid_of(app.process.proc.pid) == user.uid, "the server must not run as root"
        with httpx.Client(base_url=app.base_url, timeout=5) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, (ready.text, app.process.tail())
            # /metrics aggregates the workers' files: the tmpfs PROMETHEUS_MULTIPROC_DIR is writable by them.
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "http_requests_total" in metrics.text, app.process.tail()
            # Files the installed package must carry besides its modules (package data: the docs pages' own
            # scripts, the vendored Swagger UI and ReDoc): every same-origin asset of /docs and /redoc.
            for page in ("/docs", "/redoc"):
                html = client.get(page)
                assert html.status_code == 200, (page, html.status_code)
                assets = re.findall(r'(?:src|href)="(/[^"]*)"', html.text)
                assert assets, page
                for asset in assets:
                    assert client.get(asset).status_code == 200, (page, asset, app.process.tail())
        head = ScriptDirectory(str(runtime.workdir / "migrations")).get_current_head()
        assert alembic_version(stand_ins["postgres"]) == [head]
        spool = Path(app.env["BACKTEST_SPOOL_DIR"])
        assert spool == rehearsal.host("/var/lib/tradedesk/backtests") and spool.stat().st_uid == user.uid

        status, took = app.process.stop()
        log = app.process.tail()
        assert status in (0, -signal.SIGTERM), f"exit {status} after SIGTERM\n{log}"
        assert "Traceback" not in log, log
        assert took < 10, f"SIGTERM took {took:.1f} s: compose would SIGKILL after 10 s\n{log}"


@pytest.mark.slow
def test_a_env_made_from_the_example_keeps_what_the_image_sets(rehearsal: Rehearsal) -> None:
    """compose's env_file beats the image's ENV: an empty ``KEY=`` in .env.example would silently replace the
    image's value (an empty BACKTEST_SPOOL_DIR moved the backtest spool off its volume into /tmp), unless the
    service's ``environment`` sets it again on purpose."""
    compose = operator_compose()
    local = {"postgres": "postgresql://127.0.0.1/x", "redis": "redis://127.0.0.1/0"}
    with rehearsal.runtime() as runtime:
        for service in ("migrate", "app"):
            assert not runtime.overridden(compose, service, local), service


def drop(pattern: str) -> str:
    variant = re.sub(pattern, "", DOCKERFILE, flags=re.M)
    assert variant != DOCKERFILE, f"no line matches {pattern!r}: update the variant"
    return variant


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.parametrize(
    ("variant", "failure"),
    [
        pytest.param(
            drop(r"^COPY .*\balembic\.ini\b.*$"),
            r"compose service migrate: `alembic upgrade head` exited(?s:.*)WORKDIR /srv/tradedesk holds: migrations/$",
            id="no-ini",
        ),
        pytest.param(
            drop(r"^COPY .*\bmigrations\b.*$"),
            r"compose service migrate: (?s:.*)Path doesn't exist: .*/srv/tradedesk/migrations",
            id="no-migrations",
        ),
        pytest.param(
            DOCKERFILE.replace('CMD ["python", "-m", "app"]', 'CMD ["python", "-m", "app.server"]'),
            r"compose service app: `python -m app.server` exited 1 before it was healthy(?s:.*)No module named",
            id="wrong-cmd",
        ),
    ],
)
def test_a_broken_runtime_fails_the_rehearsal_with_its_cause(
    rehearsal: Rehearsal, stand_ins: dict[str, str], variant: str, failure: str
) -> None:
    assert variant != DOCKERFILE
    with pytest.raises(RehearsalError, match=failure), rehearsal.runtime(variant) as runtime:
        with up(runtime, operator_compose(), "app", stand_ins):
            pass


def small_rehearsal(tmp_workspace: Path, build_stage: str) -> Rehearsal:
    text = f"FROM python:3.11-slim AS build\nWORKDIR /src\n{build_stage}\nFROM python:3.11-slim\n"
    return Rehearsal(ROOT, tmp_workspace, dockerfile=text)


@pytest.fixture
def tmp_workspace() -> Iterator[Path]:
    path = workspace()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    ("build_stage", "failure"),
    [
        ("COPY pyproject.toml setup.cfg ./", r"line 3: COPY .*setup\.cfg is not in the build context"),
        ("COPY tests ./tests", r"tests is not in the build context \(missing or \.dockerignored\)"),
        ("RUN apt-get install -y curl", r"line 3: RUN .*apt-get is not run on a host"),
        ("RUN pip install . > log", r"shell operator '>' is not rehearsed"),
        ('ENTRYPOINT ["python"]', r"line 3: ENTRYPOINT .*not rehearsed"),
    ],
)
def test_what_the_host_cannot_do_like_docker_is_an_error(
    tmp_workspace: Path, build_stage: str, failure: str
) -> None:
    with pytest.raises(RehearsalError, match=failure):
        small_rehearsal(tmp_workspace, build_stage).build()


def test_compose_reading_rules() -> None:
    assert interpolate("${A:-x}/${B-y}/${C}/$D/$$E", {"A": "", "B": "", "D": "d"}) == "x///d/$E"
    services = {
        "postgres": "postgresql://postgres@127.0.0.1:5432/scratch",
        "redis": "redis://127.0.0.1:6379/13",
    }
    assert (
        local_url("postgresql+asyncpg://tradedesk:pw@postgres:5432/tradedesk", services)
        == "postgresql+asyncpg://postgres@127.0.0.1:5432/scratch"
    )
    assert local_url("redis://redis:6379/0", services) == "redis://127.0.0.1:6379/13"
    assert local_url("https://redis.example/x", services) == "https://redis.example/x"
    assert parse_dotenv("A=1\n# B=2\nC=\nD='q'\n") == {"A": "1", "C": "", "D": "q"}
    probe = ["python", "-c", "urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
    assert with_port(probe, 8000, 8123) == [
        "python",
        "-c",
        "urlopen('http://127.0.0.1:8123/healthz', timeout=2)",
    ]
    with pytest.raises(RehearsalError, match="does not name port 8000"):
        with_port(["true"], 8000, 8123)
    patterns = [".venv", "**/__pycache__", "tests", "!tests/keep"]
    assert ignored("app/core/__pycache__/x.pyc", patterns) and ignored("tests/core/a.py", patterns)
    assert not ignored("app/core/config.py", patterns) and not ignored("tests/keep", patterns)


def test_the_operator_env_fills_every_required_secret() -> None:
    values = parse_dotenv(operator_dotenv((ROOT / ".env.example").read_text()))
    assert len(values["JWT_SECRET"]) >= 32 and values["STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
    assert values["TOKEN_ENCRYPTION_KEY"] and values["FRONTEND_URL"]


def test_install_d_makes_the_directory_with_the_image_accounts_owner_and_mode(tmp_workspace: Path) -> None:
    """The accounts exist only in the image: ``install -o NAME`` gets the id ``useradd``/``groupadd`` gave."""
    stage = (
        "RUN groupadd --system --gid 10001 td && useradd --system --uid 10001 --gid td td "
        "&& install -d -o td -g td -m 0750 /var/lib/x"
    )
    rehearsal = small_rehearsal(tmp_workspace, stage)
    rehearsal.build()
    made = (rehearsal.snapshots / "build" / "var/lib/x").stat()
    assert (made.st_uid, made.st_gid, made.st_mode & 0o7777) == (10001, 10001, 0o750)
