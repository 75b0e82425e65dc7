"""The ``tensorgrade`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import uvicorn

from service.settings import get_settings


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``tensorgrade``."""
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="tensorgrade", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=settings.host, help="default: %(default)s")
    serve.add_argument("--port", type=int, default=settings.port, help="default: %(default)s")
    serve.add_argument("--workers", type=int, default=settings.workers, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.command == "serve":
        uvicorn.run(
            "service.app:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level,
            # On SIGTERM: stop accepting, let in-flight requests finish for this long.
            timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        )


if __name__ == "__main__":
    main()
