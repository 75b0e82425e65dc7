"""Where the rate-limit counters live (``TENSORGRADE_RATE_LIMIT_STORAGE``), opened one way.

Light on purpose (the ``limits`` library only, no torch): ``tensorgrade serve`` opens it in the
supervisor before starting the workers, so a store that cannot be used (``redis://`` without
the Redis client installed) stops the start with one clear line, instead of every worker
failing at start-up and being restarted forever.
"""

from __future__ import annotations

from limits.errors import ConfigurationError
from limits.storage import Storage, storage_from_string


def open_storage(uri: str) -> Storage:
    """The counters' storage for ``uri`` (``memory://``, ``redis://...``).

    Raises:
        ValueError: the URI names no usable storage; the message names the setting and the
            scheme only (the URI may hold a password).
    """
    try:
        storage = storage_from_string(uri, wrap_exceptions=True)
    except ConfigurationError as error:
        scheme = uri.split("://", 1)[0]
        reason = str(error).replace(uri, f"{scheme}://...")
        raise ValueError(f"TENSORGRADE_RATE_LIMIT_STORAGE: {reason}") from None
    if not isinstance(storage, Storage):  # an async scheme (async+redis://): not for our limiter
        raise ValueError(f"TENSORGRADE_RATE_LIMIT_STORAGE: {uri.split('://', 1)[0]}:// is async")
    return storage
