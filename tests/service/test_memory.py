"""Memory kept small when idle: glibc arenas capped, free pages returned after large answers."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys

import pytest

from service import memory

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

    async def run_briefly() -> None:
        task = asyncio.create_task(memory.trim_when_idle(idle_seconds=0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not memory.trim_pending():
                break
        task.cancel()

    asyncio.run(run_briefly())
    assert not memory.trim_pending()


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_glibc_takes_the_arena_cap_and_gives_free_pages_back() -> None:
    assert memory.limit_arenas()
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
