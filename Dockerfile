# syntax=docker/dockerfile:1
# ---- build: install the app and its dependencies into a virtualenv ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY app ./app
# setuptools too: the one a Python 3.11 venv starts with (65.5) has published advisories
RUN pip install --upgrade pip setuptools && pip install .

# ---- runtime: slim, non-root, only the virtualenv and migrations ----
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOST=0.0.0.0 \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    BACKTEST_SPOOL_DIR=/var/lib/tradedesk/backtests
# Several workers (WEB_CONCURRENCY): each writes its metrics to PROMETHEUS_MULTIPROC_DIR and /metrics
# aggregates them. `python -m app` empties the directory at start; compose mounts a tmpfs there.
RUN groupadd --system --gid 10001 tradedesk \
 && useradd --system --uid 10001 --gid tradedesk --no-create-home --shell /usr/sbin/nologin tradedesk \
 && install -d -o 10001 -g 10001 -m 0700 /tmp/prometheus \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/tradedesk/backtests
# Uploaded backtest files wait for their job in BACKTEST_SPOOL_DIR: mount a volume there (compose does), so
# a job interrupted by a restart of the container can resume (docs/backtests.md).
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv/tradedesk
COPY --chown=root:root alembic.ini ./
COPY --chown=root:root migrations ./migrations
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Validates configuration (exit 2 naming every bad variable), then serves with WEB_CONCURRENCY workers.
CMD ["python", "-m", "app"]
