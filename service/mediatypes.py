"""What counts as a JSON body, decided from its ``Content-Type`` as FastAPI decides it."""

from __future__ import annotations


def is_json(content_type: bytes | None) -> bool:
    """Whether a body is JSON by its content type, as FastAPI decides: ``application/json`` or
    ``application/<anything>+json``, parameters and case aside.

    Args:
        content_type: the raw ``Content-Type`` header, or None when there is none.
    """
    if not content_type:
        return False
    mime = content_type.split(b";", 1)[0].strip().lower()
    return mime == b"application/json" or (
        mime.startswith(b"application/") and mime.endswith(b"+json")
    )
