"""`python -m app`: validate the configuration, then serve with uvicorn.

A bad configuration exits with status 2 and one message naming every offending variable, before
any port is bound. Proxy headers are never trusted by uvicorn itself: the app resolves the client
IP and honours X-Forwarded-For only from TRUSTED_PROXIES.

With ``PROMETHEUS_MULTIPROC_DIR`` set, the directory is emptied of a previous run's metric files before any
worker starts. That must happen before ``prometheus_client`` is imported in this process (with one worker
this process serves, and its metric files are created at import), so this module imports nothing that
imports it before ``main`` has run ``prepare_multiprocess_dir``.

With several workers each gets its own ``SO_REUSEPORT`` listening socket (``app/supervisor.py``), unless
``WEB_WORKER_SOCKETS=shared``.
"""

from __future__ import annotations

import glob
import os
import sys

from app.core.config import load_settings_or_exit
from app.supervisor import serve


def prepare_multiprocess_dir() -> str | None:
    """Create ``PROMETHEUS_MULTIPROC_DIR`` if needed and delete its ``*.db`` files; None when unset."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)
        probe = os.path.join(path, ".writable")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        sys.stderr.write(f"PROMETHEUS_MULTIPROC_DIR={path} is not a writable directory: {exc.strerror}\n")
        raise SystemExit(2) from None
    return path


def main() -> None:
    settings = load_settings_or_exit()
    prepare_multiprocess_dir()
    serve(
        "app.main:app",
        worker_sockets=settings.web_worker_sockets,
        host=os.environ.get("HOST", "127.0.0.1"),  # the image sets HOST=0.0.0.0
        port=int(os.environ.get("PORT", "8000")),
        workers=settings.web_concurrency,
        proxy_headers=False,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
