"""Where the rate-limit counters live (``TENSORGRADE_RATE_LIMIT_STORAGE``), opened one way.

Light on purpose (the ``limits`` library only, no torch): ``tensorgrade serve`` opens it in the
supervisor before starting the workers, so a store that cannot be used (``redis://`` without
the Redis client installed) stops the start with one clear line, instead of every worker
failing at start-up and being restarted forever.
"""

from __future__ import annotations

import re

from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string


def open_storage(uri: str) -> Storage:
    """The counters' storage for ``uri`` (``memory://``, ``redis://...``).

    Raises:
        ValueError: the URI names no usable storage; the message names the setting and the
            scheme only (the URI may hold a password).
    """
    scheme, separator, rest = uri.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        # Nothing of it is quoted: `redis//:password@host` holds a password and no scheme.
        raise ValueError(
            "TENSORGRADE_RATE_LIMIT_STORAGE: not a URL of the form scheme://... "
            "(memory://, or redis://host:6379/0)"
        )
    try:
        storage = storage_from_string(uri, wrap_exceptions=True)
    except (ConfigurationError, ValueError) as error:
        # ValueError: the Redis client's own, for a URL it cannot read (a port that is no
        # number); said under the setting's name, as the library's own errors are.
        reason = str(error).replace(uri, f"{scheme}://...")
        if rest:
            reason = reason.replace(rest, "...")
        raise ValueError(f"TENSORGRADE_RATE_LIMIT_STORAGE: {reason}") from None
    if not isinstance(storage, Storage):  # an async scheme (async+redis://): not for our limiter
        raise ValueError(f"TENSORGRADE_RATE_LIMIT_STORAGE: {scheme}:// is async")
    return storage


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
"""A URL's scheme (RFC 3986): what may be quoted of the setting."""
