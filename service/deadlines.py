"""Deadlines of request bodies: a body not complete in time is a 408, checked by one sweep
per event loop rather than a timer per request.

``EdgeMiddleware`` (``service/middleware.py``) watches each body it or the app reads with
``BodyDeadlines.watching``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.problems import Problem, ProblemException


class BodyTimeout(ProblemException):
    """Raised from ``receive`` when the body has not arrived within the time limit."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            Problem(
                408,
                f"the request body did not arrive within {seconds:g} s; send it faster",
                kind="body-timeout",
                title="The request body took too long",
                headers={"Connection": "close"},
            )
        )


class BodyDeadlines:
    """The deadlines of the request bodies being read in one event loop, enforced by a sweep.

    ``asyncio.timeout`` arms and cancels a timer for every request: about 8 us of the 60 us a
    shape request costs in this layer and the app (measured), for a deadline that almost
    never fires. Here a body being read is an entry in a dict, and one timer per ``tick``
    runs while there are entries; it cancels each reading task past its deadline, and the
    reader turns that cancellation into a ``BodyTimeout``. A body is refused at most one tick
    after its deadline.

    A task is watched only while it awaits ``receive`` inside ``EdgeMiddleware``, and the
    sweep runs in the same loop, so its cancellation always lands on that await (never in
    the app); a cancellation from elsewhere (the server shutting down) is passed on as it is.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self.loop = loop
        self.tick = tick
        self.reading: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.armed = False

    def watch(self, task: asyncio.Task[Any], deadline: float) -> None:
        """Cancel ``task`` once ``deadline`` (the loop's time) has passed, until ``done``."""
        self.reading[task] = deadline
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.tick, self._sweep)

    def done(self, task: asyncio.Task[Any]) -> None:
        """Stop watching ``task``."""
        self.reading.pop(task, None)

    def timed_out(self, task: asyncio.Task[Any]) -> bool:
        """Whether the cancellation ``task`` received is this sweep's (and only this sweep's):
        then it is withdrawn, and the caller raises ``BodyTimeout`` instead."""
        if task not in self.expired:
            return False
        self.expired.discard(task)
        return task.uncancel() == 0

    def watching(self, deadline: float, timeout: float) -> _Watching:
        """``with deadlines.watching(...)``: the current task's reads inside the block are cut
        at ``deadline`` with a ``BodyTimeout`` (which says ``timeout``)."""
        task = asyncio.current_task()
        assert task is not None, "ASGI apps run in a task"
        return _Watching(self, task, deadline, timeout)

    def _sweep(self) -> None:
        now = self.loop.time()
        for task, deadline in list(self.reading.items()):
            if deadline <= now:
                del self.reading[task]
                self.expired.add(task)
                task.cancel()
        if self.reading:
            self.loop.call_later(self.tick, self._sweep)
        else:
            self.armed = False


class _Watching:
    """The context of ``BodyDeadlines.watching``: a class rather than a generator-based
    context manager, because it is entered on every request."""

    __slots__ = ("deadline", "deadlines", "task", "timeout")

    def __init__(
        self, deadlines: BodyDeadlines, task: asyncio.Task[Any], deadline: float, timeout: float
    ) -> None:
        self.deadlines, self.task, self.deadline, self.timeout = deadlines, task, deadline, timeout

    def __enter__(self) -> None:
        self.deadlines.watch(self.task, self.deadline)

    def __exit__(self, *_: object) -> None:
        self.deadlines.done(self.task)
        # Whatever the read raised for it (a receive may turn a cancellation into an error of
        # its own), a sweep's cancellation is withdrawn here and becomes the 408.
        if self.deadlines.timed_out(self.task):
            raise BodyTimeout(self.timeout) from None
