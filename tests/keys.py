"""Keys and settings of a service with roles, shared by the tests of roles and limits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

INSTRUCTOR = "instructor-key-0123456789abcdef"
STUDENT = "student-key-0123456789abcdef"
OTHER_STUDENT = "student-key-fedcba9876543210"
UNKNOWN = "unknown-key-0123456789abcdef"
SECRET = "variant-secret-0123456789abcdef"


def keyed_settings(**overrides: Any) -> Settings:
    """Settings with one instructor key, two student keys and a variant secret."""
    values: dict[str, Any] = {
        "instructor_keys": INSTRUCTOR,
        "student_keys": f"{STUDENT}, {OTHER_STUDENT}",
        "variant_secret": SECRET,
    }
    return Settings(**(values | overrides))


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


@contextmanager
def student_client() -> Iterator[TestClient]:
    """The app with roles and no check rate limit (the tests send many checks), its client
    sending the student key."""
    with TestClient(create_app(keyed_settings(check_rate_limit=""))) as client:
        client.headers.update(key(STUDENT))
        yield client
