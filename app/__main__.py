"""`python -m app`: validate the configuration, then serve with uvicorn.

A bad configuration exits with status 2 and one message naming every offending variable, before
any port is bound. Proxy headers are never trusted by uvicorn itself: the app resolves the client
IP and honours X-Forwarded-For only from TRUSTED_PROXIES.
"""

from __future__ import annotations

import os

import uvicorn

from app.core.config import load_settings_or_exit


def main() -> None:
    settings = load_settings_or_exit()
    uvicorn.run(
        "app.main:app",
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
        workers=settings.web_concurrency,
        proxy_headers=False,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=20,
    )


if __name__ == "__main__":
    main()
