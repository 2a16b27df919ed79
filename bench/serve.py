"""`python -m bench.serve APP --port N --workers N [--factory]`: a bench server, run as production runs.

With several workers it uses the supervisor `python -m app` uses (app/supervisor.py: one SO_REUSEPORT
listening socket per worker), for the bare baseline apps too, so a full-stack/bare ratio compares like
with like. ``WEB_WORKER_SOCKETS=shared`` gives uvicorn's single shared socket instead, for A/B runs.
"""

from __future__ import annotations

import argparse
import os

from app.supervisor import serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--factory", action="store_true")
    args = parser.parse_args()
    serve(
        args.app,
        worker_sockets=os.environ.get("WEB_WORKER_SOCKETS", "reuseport"),
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        factory=args.factory,
        access_log=False,
        proxy_headers=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
