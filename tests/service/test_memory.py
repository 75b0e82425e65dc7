"""The allocator tuning is applied by every worker at start-up."""

from __future__ import annotations

import platform

import pytest
from fastapi.testclient import TestClient

from service import app as app_module
from service.memory import tune_allocator
from service.settings import Settings


def test_glibc_takes_the_settings() -> None:
    expected = platform.libc_ver()[0] == "glibc"
    assert tune_allocator(2, 2**20) is expected
    assert tune_allocator(0, 0) is True  # nothing asked, nothing refused


def test_each_worker_tunes_its_allocator_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(app_module, "tune_allocator", lambda *args: calls.append(args) or True)
    settings = Settings(malloc_arena_max=3, malloc_mmap_threshold_bytes=4096)
    with TestClient(app_module.create_app(settings)):
        pass
    assert calls == [(3, 4096)]
