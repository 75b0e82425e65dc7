"""The id of the request being served, for logs, problem details and the ``X-Request-ID`` header.

The edge middleware (``service/middleware.py``) sets it at the start of every request; code
below it (handlers, problem details, log records) reads it with ``current_request_id()``. A
context variable is per-task, so concurrent requests never see each other's id.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

HEADER = "X-Request-ID"

# A caller's id is honoured only when it is short and plain, so it cannot forge log lines or
# smuggle markup into a problem detail; anything else is replaced by a fresh id.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("tensorgrade_request_id", default=None)


def new_request_id() -> str:
    """A fresh random id (32 hex digits: 128 random bits, without ``uuid4``'s object)."""
    return os.urandom(16).hex()


def accept_request_id(incoming: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is acceptable, else a fresh id.

    Args:
        incoming: the header's value, or None when the request had none.

    Returns:
        The id this request is known by.
    """
    if incoming is not None and _ACCEPTED.fullmatch(incoming):
        return incoming
    return new_request_id()


def set_request_id(request_id: str) -> None:
    """Make ``request_id`` the id of the request running in this context."""
    _request_id.set(request_id)


def current_request_id() -> str | None:
    """The id of the request running in this context, or None outside a request."""
    return _request_id.get()
