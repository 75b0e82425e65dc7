"""Shared fixtures: an in-process app and client with default settings (but the check limit)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    # Without the per-address check limit (30 a minute, 300 an hour): hundreds of tests share
    # this client, and how many of their checks fall in one minute follows the machine's
    # speed (a fast run was refused 429). The limit's own tests make apps of their own.
    with TestClient(create_app(Settings(check_rate_limit=""))) as test_client:
        yield test_client
