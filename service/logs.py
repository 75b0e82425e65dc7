"""Structured logs: one JSON object per line on stderr.

``tensorgrade serve`` hands ``log_config(level)`` to uvicorn, so uvicorn's own messages and the
service's share the format. Requests are logged once each by the edge middleware
(``service/middleware.py``) on the ``tensorgrade.access`` logger (uvicorn's access log is
switched off: it would log every request a second time, in another format). What a line holds
is chosen, never dumped: no headers (API keys travel in one), no bodies (they hold tensors and
students' answers).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from service.requestid import current_request_id

ACCESS_LOGGER = "tensorgrade.access"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's colourised duplicate of the message
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id is not None:
            line["request_id"] = request_id
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


LOGGED = "_tensorgrade_logged"
"""Set on an exception the service's 500 handler has logged (``mark_logged``)."""


def mark_logged(error: BaseException) -> None:
    """Note that ``error``'s traceback is in the log, with the request's id."""
    setattr(error, LOGGED, True)


class LoggedByTheService(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" record of an error the service has
    logged already: Starlette re-raises an error after the service's handler has answered the
    500 and logged the traceback with the request's id (``service.problems``), and uvicorn
    would log the same traceback again. An error the handler never saw (one raised after the
    answer started, say) keeps uvicorn's record, its only one."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not getattr(error, LOGGED, False)


class UpgradeIgnored(logging.Filter):
    """Drops uvicorn's two warnings about a request that offers to switch protocols
    (``Upgrade: h2c``, which Java's HttpClient sends with every request by default): the
    service speaks HTTP/1.1 only, ignores the offer as HTTP allows and answers the request,
    so there is nothing to warn about, and a client sending it would write two lines per
    request (one telling the operator to install a WebSocket library the service has no use
    for)."""

    IGNORED = ("Unsupported upgrade request.", "No supported WebSocket library detected.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.IGNORED))


def log_config(level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the service, JSON on stderr.

    Args:
        level: the lowest level logged (``info``, ``warning``...).

    Returns:
        The configuration, for ``uvicorn.run(log_config=...)``.
    """
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "filters": {
            "logged_by_the_service": {"()": f"{__name__}.LoggedByTheService"},
            "upgrade_ignored": {"()": f"{__name__}.UpgradeIgnored"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": upper, "propagate": False},
            "uvicorn.error": {
                "handlers": ["stderr"],
                "level": upper,
                "propagate": False,
                "filters": ["logged_by_the_service", "upgrade_ignored"],
            },
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "tensorgrade": {"handlers": ["stderr"], "level": upper, "propagate": False},
            # asyncio logs a protocol's failure itself (a connection uvicorn could not answer,
            # such as a second answer to a request already answered): JSON, as every line.
            "asyncio": {"handlers": ["stderr"], "level": upper, "propagate": False},
        },
    }


def ensure_logging(level: str) -> None:
    """Log the service's records as JSON on stderr unless logging was configured already.

    Covers a plain ``uvicorn service.app:app``, which configures only uvicorn's loggers (the
    access lines, at INFO, would otherwise be dropped); an application that configured logging
    itself (a handler on the root logger or ours) is left alone. Records still propagate, so a
    handler added to the root logger later sees them too.
    """
    logger = logging.getLogger("tensorgrade")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(level.upper())
