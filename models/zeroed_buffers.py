"""Buffers kept between Jacobians of the same size, so a mostly-zero Jacobian costs its
entries that are not zero, not its size.

A conv layer's Jacobian is nearly all zeros: dy/dx of the benchmark's conv1d has 4M entries
of which 4% are not zero, dy/dW 6%. Written into fresh memory, its zeros are most of the
work, a pass over 53 MB bound by memory bandwidth: on a 2-core Xeon that pass alone is a
tenth of ``torch.func.jacrev``'s whole time. A buffer kept from the previous Jacobian of the
same size only needs the entries that one wrote set back to zero, and this one's written: a
few percent of the pass; and where the next Jacobian has the same shape and settings (a burst
of requests for the same layer), those are the entries it writes anyway: they are simply
overwritten.

A buffer is reused only when nothing else refers to its memory. The pool keeps the buffer's
storage and counts the references to it (``torch._C._storage_Use_Count``): every tensor,
view, numpy array or memoryview derived from a Jacobian keeps its storage referenced, so a
Jacobian still being encoded or sent (a safetensors answer sends the tensor's own memory),
or kept by a caller, is never handed out again; nor while anything holds the storage's own
Python object, which torch hands to whoever asks a tensor of it for its storage. Where torch
lacks the count, nothing is recycled.

A new buffer is written whole by its first holder, as any new tensor is. The pool never lets
a buffer go to make room for another (that would free tens of megabytes in a request's
time): a size it has no room for is a tensor of its own, and the idle trimmer lets go of the
buffers not taken for a second (``release_free``).

Recycling happens only inside ``recycling()``, which the Jacobian route enters around its
computation and encoding, and only on the CPU. Elsewhere (answer keys kept for grading, the
tests) and on a GPU, a Jacobian is a fresh tensor as before. A buffer's holder names every
region it writes (``Taken.will_write``) before writing it: anything written elsewhere would be
left behind for the next Jacobian, so a recycled Jacobian must not be written to in place
after it is built.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

Strided = tuple[tuple[int, ...], tuple[int, ...], int]
"""A strided view's ``(size, stride, storage offset)``, in elements."""

DEFAULT_MAX_BYTES = 64 << 20
"""Most bytes of buffers one process keeps (the benchmark's conv1d needs 53 MB for dy/dx and
dy/dW together)."""

MIN_BYTES = 1 << 20
"""Smaller Jacobians are written into fresh memory: their zeros cost less than the lookup."""

_DTYPES = frozenset({torch.float64, torch.float32})
_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)
_is_wrapped: Callable[[torch.Tensor], bool] | None = getattr(
    torch._C._functorch, "is_functorch_wrapped_tensor", None
)
_recycling: ContextVar[bool] = ContextVar("tensorgrade_recycling", default=False)


@dataclass
class _Buffer:
    storage: torch.UntypedStorage
    dtype: torch.dtype
    numel: int
    written: list[Strided] = field(default_factory=list)
    """The regions the last holder wrote, all else zeros; the whole buffer (``whole``) until
    a holder has written it all."""
    last_taken: float = 0.0
    """When it was last handed out (``time.monotonic()``)."""
    alone: int = 0
    """The Python references to ``storage`` while only the pool holds it (``python_refs``)."""

    @property
    def nbytes(self) -> int:
        return self.storage.nbytes()

    @property
    def whole(self) -> list[Strided]:
        """Every element, as the one region of a flat view."""
        return [((self.numel,), (1,), 0)]

    def python_refs(self) -> int:
        return sys.getrefcount(self.storage)

    def free(self, count: Callable[[int], int]) -> bool:
        """Whether only the pool refers to the memory.

        Every tensor, view or array of it counts on the storage itself. Torch keeps one Python
        object per storage, though, and hands this very one to whoever asks a Jacobian for its
        storage (``untyped_storage()``, ``storage()``): such a holder counts only as a Python
        reference to it.
        """
        return count(self.storage._cdata) == 1 and self.python_refs() <= self.alone


@dataclass
class Taken:
    """A buffer handed out. A new one (``fresh``: never written whole, uninitialised) is
    written all of it, zeros included, as any new tensor, and then ``written_whole`` says so.
    A recycled one is zeros outside the regions its last holder wrote, which ``will_write``
    sets back to zero (or leaves, where they are the ones about to be written again)."""

    tensor: torch.Tensor
    _buffer: _Buffer
    fresh: bool

    def will_write(self, regions: Sequence[Strided]) -> None:
        """Make a recycled tensor zeros outside ``regions``, which the caller then writes
        whole, and record them for the next holder.

        The same Jacobian shape and settings write the same regions each time, so those
        are simply overwritten: only the entries that are not zero are touched, once.
        """
        buffer = self._buffer
        regions = list(regions)
        if buffer.written != regions:
            # Both recorded until the old ones are zeros: a wipe cut short is redone.
            buffer.written = [*buffer.written, *regions]
            for size, stride, offset in buffer.written[: -len(regions) or None]:
                self.tensor.as_strided(size, stride, offset).zero_()
        # Recorded before anything is written: a write cut short is still wiped next time.
        buffer.written = regions

    def written_whole(self, regions: Sequence[Strided]) -> None:
        """A fresh tensor is now written whole, zeros outside ``regions``. Until this is
        said, the next holder takes the buffer as new (a fill cut short leaves whatever the
        memory held)."""
        self._buffer.written = list(regions)


class ZeroedBuffers:
    """A bounded pool of CPU buffers for Jacobians, reused by size and dtype (zeros but where
    their last holder wrote); safe across threads.

    Args:
        max_bytes: most bytes kept in all (0: keep none).
        min_bytes: smallest buffer worth keeping.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, min_bytes: int = MIN_BYTES) -> None:
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self._buffers: list[_Buffer] = []
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of the buffers kept, in use or free."""
        with self._lock:
            return sum(buffer.nbytes for buffer in self._buffers)

    def take(self, shape: Sequence[int], like: torch.Tensor) -> Taken | None:
        """A contiguous tensor of ``shape`` in ``like``'s dtype, from the pool (new, or
        recycled: see ``Taken``).

        Returns:
            The tensor (call ``Taken.will_write`` before writing it), or ``None`` where the
            pool does not serve it (outside ``recycling()``, not a plain CPU float tensor,
            too small or too large, no room, or no reference count in this torch): the caller
            allocates as usual.
        """
        count = _use_count
        numel = math.prod(shape)
        nbytes = numel * like.element_size()
        if (
            count is None
            or not _recycling.get()
            or not self.min_bytes <= nbytes <= self.max_bytes
            or like.device.type != "cpu"
            or like.dtype not in _DTYPES
            or like.requires_grad
            or (_is_wrapped is not None and _is_wrapped(like))
        ):
            return None
        with self._lock:
            buffer = self._free_buffer(like.dtype, numel, count)
            if buffer is None:
                buffer = self._new_buffer(like.dtype, numel, nbytes)
                if buffer is None:
                    return None
            fresh = buffer.written == buffer.whole
            buffer.last_taken = time.monotonic()
            # Taken while the lock is held: from here on the storage counts this tensor, so no
            # other thread can take the buffer.
            tensor = torch.empty(0, dtype=like.dtype).set_(
                buffer.storage, 0, tuple(shape), contiguous_strides(shape)
            )
        return Taken(tensor, buffer, fresh)

    def release_free(self, unused_for: float = 0.0) -> int:
        """Let go of the buffers not in use and not taken for ``unused_for`` seconds (those of
        sizes no longer asked for, or every one once the worker is idle).

        Returns:
            The bytes let go.
        """
        count = _use_count
        if count is None:
            return 0
        since = time.monotonic() - unused_for
        with self._lock:
            kept = [b for b in self._buffers if b.last_taken > since or not b.free(count)]
            released = sum(b.nbytes for b in self._buffers) - sum(b.nbytes for b in kept)
            self._buffers = kept
        return released

    def _free_buffer(
        self, dtype: torch.dtype, numel: int, count: Callable[[int], int]
    ) -> _Buffer | None:
        """A buffer of this size not in use, if the pool has one."""
        for buffer in self._buffers:
            if buffer.dtype == dtype and buffer.numel == numel and buffer.free(count):
                return buffer
        return None

    def _new_buffer(self, dtype: torch.dtype, numel: int, nbytes: int) -> _Buffer | None:
        """A new buffer, or ``None`` where the buffers kept leave no room for it.

        No buffer is let go to make room: that would free tens of megabytes inside a request
        (and two sizes over the limit together would evict each other at every one of them).
        A size no longer asked for is let go by the idle trimmer (``release_free``).
        """
        if sum(buffer.nbytes for buffer in self._buffers) + nbytes > self.max_bytes:
            return None
        # Uninitialised: its first holder writes it whole, as it would a tensor of its own
        # (zeroing it here and writing the entries after would cost a second pass).
        buffer = _Buffer(torch.empty(numel, dtype=dtype).untyped_storage(), dtype, numel)
        buffer.written = buffer.whole
        self._buffers.append(buffer)
        buffer.alone = buffer.python_refs()  # no other name for the storage left here
        return buffer


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """A contiguous tensor's strides, as torch lays them out (an empty dimension counts as 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(1, size)
    return tuple(reversed(strides))


BUFFERS = ZeroedBuffers()
"""The process's pool (its size set at start-up by the service's settings)."""


@contextmanager
def recycling() -> Iterator[None]:
    """Within this block (this thread or task), large CPU Jacobians are written into the
    pool's buffers. Enter it only where no Jacobian built inside is written to in place."""
    token = _recycling.set(True)
    try:
        yield
    finally:
        _recycling.reset(token)


def take_zeroed(shape: Sequence[int], like: torch.Tensor) -> Taken | None:
    """``BUFFERS.take``: a buffer of the pool, or ``None`` (allocate as usual)."""
    return BUFFERS.take(shape, like)
