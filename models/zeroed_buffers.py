"""Zeroed buffers kept between Jacobians of the same size, so a mostly-zero Jacobian costs
its entries that are not zero, not its size.

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
or kept by a caller, is never handed out again. Where torch lacks the count, nothing is
recycled.

Recycling happens only inside ``recycling()``, which the Jacobian route enters around its
computation and encoding, and only on the CPU. Elsewhere (answer keys kept for grading, the
tests) and on a GPU, a Jacobian is a fresh tensor as before. A buffer's holder names every
region it writes (``Taken.will_write``) before writing it: anything written elsewhere would be
left behind for the next Jacobian, so a recycled Jacobian must not be written to in place
after it is built.
"""

from __future__ import annotations

import math
import threading
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
    """The regions the last holder wrote: all else is zeros."""
    last_taken: int = 0

    @property
    def nbytes(self) -> int:
        return self.storage.nbytes()

    def free(self, count: Callable[[int], int]) -> bool:
        """Whether only the pool refers to the memory (its own storage object)."""
        return count(self.storage._cdata) == 1


@dataclass
class Taken:
    """A buffer handed out: ``tensor`` is zeros outside the regions its last holder wrote,
    which ``will_write`` sets back to zero (or leaves, where they are the ones about to be
    written whole again)."""

    tensor: torch.Tensor
    _buffer: _Buffer

    def will_write(self, regions: Sequence[Strided]) -> None:
        """Make the tensor zeros outside ``regions``, which the caller then writes whole.

        The same Jacobian shape and settings write the same regions each time, so those
        are simply overwritten: only the entries that are not zero are touched, once.
        """
        buffer = self._buffer
        regions = list(regions)
        if buffer.written != regions:
            for size, stride, offset in buffer.written:
                self.tensor.as_strided(size, stride, offset).zero_()
        # Recorded before anything is written: a write cut short is still wiped next time.
        buffer.written = regions


class ZeroedBuffers:
    """A bounded pool of zeroed CPU buffers, reused by size and dtype; safe across threads.

    Args:
        max_bytes: most bytes kept in all (0: keep none).
        min_bytes: smallest buffer worth keeping.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, min_bytes: int = MIN_BYTES) -> None:
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self._buffers: list[_Buffer] = []
        self._lock = threading.Lock()
        self._clock = 0

    @property
    def held_bytes(self) -> int:
        """Bytes of the buffers kept, in use or free."""
        with self._lock:
            return sum(buffer.nbytes for buffer in self._buffers)

    def take(self, shape: Sequence[int], like: torch.Tensor) -> Taken | None:
        """A contiguous tensor of ``shape`` in ``like``'s dtype, from the pool.

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
            self._clock += 1
            buffer = self._free_buffer(like.dtype, numel, count)
            if buffer is None:
                buffer = self._new_buffer(like.dtype, numel, nbytes, count)
                if buffer is None:
                    return None
            buffer.last_taken = self._clock
            # Taken while the lock is held: from here on the storage counts this tensor, so no
            # other thread can take the buffer.
            tensor = torch.empty(0, dtype=like.dtype).set_(
                buffer.storage, 0, tuple(shape), contiguous_strides(shape)
            )
        return Taken(tensor, buffer)

    def release_free(self) -> int:
        """Let go of every buffer not in use (an idle worker gives the memory back).

        Returns:
            The bytes let go.
        """
        count = _use_count
        if count is None:
            return 0
        with self._lock:
            kept = [buffer for buffer in self._buffers if not buffer.free(count)]
            released = sum(buffer.nbytes for buffer in self._buffers) - sum(
                buffer.nbytes for buffer in kept
            )
            self._buffers = kept
        return released

    def _free_buffer(
        self, dtype: torch.dtype, numel: int, count: Callable[[int], int]
    ) -> _Buffer | None:
        for buffer in self._buffers:
            if buffer.dtype == dtype and buffer.numel == numel and buffer.free(count):
                return buffer
        return None

    def _new_buffer(
        self, dtype: torch.dtype, numel: int, nbytes: int, count: Callable[[int], int]
    ) -> _Buffer | None:
        """A new zeroed buffer, making room by letting go of the least recently taken free
        ones; ``None`` where the buffers in use leave no room."""
        held = sum(buffer.nbytes for buffer in self._buffers)
        for buffer in sorted(self._buffers, key=lambda b: b.last_taken):
            if held + nbytes <= self.max_bytes:
                break
            if buffer.free(count):
                self._buffers.remove(buffer)
                held -= buffer.nbytes
        if held + nbytes > self.max_bytes:
            return None
        storage = torch.zeros(numel, dtype=dtype).untyped_storage()
        buffer = _Buffer(storage, dtype, numel)
        self._buffers.append(buffer)
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
    """Within this block (this thread or task), large CPU Jacobians are written into recycled
    zeroed buffers. Enter it only where no Jacobian built inside is written to in place."""
    token = _recycling.set(True)
    try:
        yield
    finally:
        _recycling.reset(token)


def take_zeroed(shape: Sequence[int], like: torch.Tensor) -> Taken | None:
    """``BUFFERS.take``: a recycled zeroed tensor, or ``None`` (allocate as usual)."""
    return BUFFERS.take(shape, like)
