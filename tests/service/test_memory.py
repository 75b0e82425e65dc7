"""Memory kept small when idle: glibc arenas capped, free pages returned after large answers."""

from __future__ import annotations

import ctypes
import gc
import sys

import pytest
from fastapi.testclient import TestClient

from service import memory
from service.app import create_app
from service.settings import Settings
from tests.helpers import run_idle_trimmer

GLIBC = sys.platform == "linux" and memory._glibc() is not None


def test_a_large_answer_marks_a_trim_and_a_small_one_does_not() -> None:
    memory.clear_pending()
    memory.note_large_answer(memory.LARGE_BYTES - 1)
    assert not memory.trim_pending()
    memory.note_large_answer(memory.LARGE_BYTES)
    assert memory.trim_pending()
    memory.clear_pending()


def test_the_trimmer_releases_once_the_worker_is_idle() -> None:
    memory.clear_pending()
    memory.note_large_answer(memory.LARGE_BYTES)

    run_idle_trimmer()
    assert not memory.trim_pending()


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_glibc_takes_the_arena_cap_and_gives_free_pages_back() -> None:
    assert memory.tune_allocator(2, 2**20)
    assert memory.tune_allocator(0, 0)  # nothing asked, nothing refused
    libc = memory._glibc()
    assert libc is not None
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 16 MB in blocks below the mmap threshold, then a block above them that keeps the
    # allocator from trimming by itself when they are freed: only malloc_trim returns them.
    blocks = [libc.malloc(64 << 10) for _ in range(256)]
    guard = libc.malloc(64)
    for block in blocks:
        libc.free(block)
    try:
        assert memory.release_free_memory()
    finally:
        libc.free(guard)


def test_startup_objects_are_frozen_out_of_collections() -> None:
    before = gc.get_freeze_count()
    kept = [object() for _ in range(10)]
    memory.freeze_startup_objects()
    try:
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()


def test_each_worker_tunes_its_allocator_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "tune_allocator", lambda *args: calls.append(args) or True)
    settings = Settings(malloc_arena_max=3, malloc_mmap_threshold_bytes=4096)
    with TestClient(create_app(settings)):
        pass
    assert calls == [(3, 4096)]
