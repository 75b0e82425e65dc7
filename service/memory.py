"""Allocator tuning, so that a worker's memory levels off under load instead of creeping up.

glibc gives each thread that allocates its own arena (up to 8 per core) and, after large blocks
are freed, raises the size above which it maps memory directly. Under load, with a threadpool of
request threads decoding and encoding tensors of megabytes, both keep freed memory in the
process: in the soak test (``bench/soak.py``) a worker's resident memory climbed past 2 GB in
40 s of overload. Two arenas and a fixed 1 MiB mapping threshold (large buffers go straight
back to the system when freed) kept it near 1 GB at the same throughput.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""``mallopt`` parameters, from glibc's ``malloc.h``."""


def tune_allocator(arena_max: int, mmap_threshold: int) -> bool:
    """Apply the settings through glibc's ``mallopt``; 0 leaves a parameter as it is.

    Args:
        arena_max: most malloc arenas of the process.
        mmap_threshold: blocks of this many bytes or more are mapped directly, and this
            threshold no longer moves.

    Returns:
        Whether the C library took every setting given (False where there is no glibc).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    taken = True
    for parameter, value in ((M_ARENA_MAX, arena_max), (M_MMAP_THRESHOLD, mmap_threshold)):
        if value:
            taken = mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1 and taken
    return taken
