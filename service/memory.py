"""Giving memory back after large answers, so an idle worker stays small.

A large Jacobian passes through several buffers of tens of megabytes (the tensor, its bytes,
the response body). glibc's allocator keeps such freed blocks for reuse, which is right during
a burst of requests but leaves an idle worker holding hundreds of megabytes: each thread of
the thread pool gets an arena of its own, and the free space of those arenas is never handed
back. Two measures (the allocator's are glibc only, elsewhere no-ops):

1. at start-up, few arenas (``TENSORGRADE_MALLOC_ARENA_MAX``, 2), so freed blocks land where
   ``malloc_trim`` can return them (the request threads share them; the GIL serialises them
   anyway); a fixed mapping threshold (``TENSORGRADE_MALLOC_MMAP_THRESHOLD_BYTES``) is
   available but off by default: at 1 MiB every large answer faulted in fresh pages (the
   4M-entry Jacobian over HTTP took 2.5 times as long), while with the idle trim below the
   workers' memory levels off in the soak test (``bench/soak.py``) without it;
2. the recycled Jacobian buffers (``models.zeroed_buffers``) not taken for ``IDLE_SECONDS``
   are let go, and once no large answer has been produced for as long, ``malloc_trim(0)``
   gives the free pages back to the operating system.

And one for the garbage collector: ``freeze_startup_objects`` after the warm-up.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from functools import lru_cache

from models import zeroed_buffers

IDLE_SECONDS = 1.0
LARGE_BYTES = 4 << 20
"""An answer at least this large marks the worker for a trim once it is idle."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
_M_ARENA_MAX = -8
_pending_since: float | None = None


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


def freeze_startup_objects() -> None:
    """Exclude everything alive after start-up from the garbage collector's passes.

    torch and the app leave about 200,000 long-lived objects; without this, each full
    collection under load walks all of them again (tens of milliseconds, a stall every few
    seconds at thousands of requests per second). Call once, after the warm-up.
    """
    gc.collect()
    gc.freeze()


def tune_allocator(arena_max: int, mmap_threshold: int) -> bool:
    """Apply the allocator settings through glibc's ``mallopt``; 0 leaves a parameter as it is.

    Call before the request threads start.

    Args:
        arena_max: most malloc arenas of the process.
        mmap_threshold: blocks of this many bytes or more are mapped directly, and this
            threshold no longer moves.

    Returns:
        Whether the C library took every setting given (False where there is no glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    taken = True
    for parameter, value in ((_M_ARENA_MAX, arena_max), (_M_MMAP_THRESHOLD, mmap_threshold)):
        if value:
            taken = libc.mallopt(parameter, value) == 1 and taken
    return taken


def note_large_answer(size: int) -> None:
    """Record that an answer of ``size`` bytes (or elements times 8) was just built."""
    global _pending_since
    if size >= LARGE_BYTES:
        _pending_since = time.monotonic()


def trim_pending() -> bool:
    """Whether a large answer was built since the last trim."""
    return _pending_since is not None


def clear_pending() -> None:
    """Forget a pending trim (the trimmer does this when it trims)."""
    global _pending_since
    _pending_since = None


def release_free_memory() -> bool:
    """Hand the allocator's free pages back to the operating system.

    Returns:
        Whether any memory was released.
    """
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


async def trim_when_idle(idle_seconds: float = IDLE_SECONDS) -> None:
    """Forever: let go of the recycled Jacobian buffers not taken for ``idle_seconds``, and
    release free memory once no large answer was built (nor a buffer let go) for as long."""
    while True:
        await asyncio.sleep(idle_seconds)
        # The recycled Jacobian buffers are kept through a burst of requests, not after (those
        # of 1 to 4 MiB mark no large answer, but may be TENSORGRADE_JACOBIAN_BUFFER_BYTES in
        # all), and a size no longer asked for is let go, to make room for others. Their
        # memory is handed back with the rest once the worker is idle, not in a burst.
        if zeroed_buffers.BUFFERS.release_free(unused_for=idle_seconds):
            note_large_answer(LARGE_BYTES)
        since = _pending_since
        if since is not None and time.monotonic() - since >= idle_seconds:
            clear_pending()
            await asyncio.to_thread(release_free_memory)
