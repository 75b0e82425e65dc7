"""How many computations run at once on each device, and what happens when all are busy.

Each device has a fixed number of slots (``max_concurrent_computations``). A computation that
finds them all taken waits for one, but only if fewer than ``compute_queue_size`` others are
already waiting and only for ``compute_queue_timeout_seconds``; otherwise it is answered 503
with ``Retry-After``. The queue is bounded on purpose: under a deadline-night burst, an
unbounded queue would hold every request (and its decoded tensors) in memory and answer them
all late, where a quick 503 lets a client back off and retry.

The gate blocks the calling thread while it waits, so it is used from plain ``def`` routes,
which FastAPI runs in its threadpool.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from service.problems import Problem
from service.settings import Settings


def device_key(device: torch.device) -> str:
    """One name per physical device: ``cpu``, ``cuda:0``, ``cuda:1``..."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


class ComputeGate:
    """Per-device slots with a bounded, time-limited wait.

    Example:
        >>> gate = ComputeGate(capacity=1, queue_size=0, timeout=0.0)
        >>> with gate.slot(torch.device("cpu")):
        ...     pass
    """

    def __init__(self, capacity: int, queue_size: int, timeout: float) -> None:
        self.capacity = capacity
        self.queue_size = queue_size
        self.timeout = timeout
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._waiting: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ComputeGate:
        """The gate of ``max_concurrent_computations`` slots per device and its bounded queue."""
        return cls(
            settings.max_concurrent_computations,
            settings.compute_queue_size,
            settings.compute_queue_timeout_seconds,
        )

    def _semaphore(self, key: str) -> threading.BoundedSemaphore:
        with self._lock:
            if key not in self._slots:
                self._slots[key] = threading.BoundedSemaphore(self.capacity)
                self._waiting[key] = 0
            return self._slots[key]

    def _busy(self, key: str, why: str) -> Problem:
        return Problem(
            503,
            f"{key} is busy: {self.capacity} computation(s) are running and {why}; "
            "retry after the time in Retry-After",
            kind="busy",
            title="The service is busy",
            headers={"Retry-After": str(max(1, math.ceil(self.timeout)))},
        )

    @contextmanager
    def slot(self, device: torch.device) -> Iterator[None]:
        """Hold one of ``device``'s slots for the duration of the block.

        Raises:
            Problem: 503 when the wait queue is full or no slot freed up in time.
        """
        key = device_key(device)
        semaphore = self._semaphore(key)
        if not semaphore.acquire(blocking=False):
            with self._lock:
                if self._waiting[key] >= self.queue_size:
                    raise self._busy(key, f"{self._waiting[key]} are waiting")
                self._waiting[key] += 1
            try:
                acquired = semaphore.acquire(timeout=self.timeout)
            finally:
                with self._lock:
                    self._waiting[key] -= 1
            if not acquired:
                raise self._busy(key, f"none finished within {self.timeout:g} s")
        try:
            yield
        finally:
            semaphore.release()
