"""Headless Chromium driven over the DevTools protocol, for tests of pages as a browser runs
them: what a click does, and every request the page makes (the Network domain).

The protocol runs over the pipe Chromium opens on file descriptors 3 and 4
(``--remote-debugging-pipe``): no port to open and no client library to install. The browser
is started with ``os.posix_spawn``, which puts the pipe's ends at 3 and 4 without running
Python in a forked child of a process with threads (pytest's, the server's).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ProtocolError(Exception):
    """The browser refused a command, or a page's script threw."""


class Browser:
    """One headless Chromium; ``open`` a page in it, ``close`` it when done.

    Args:
        executable: the browser.
        flags: its command-line flags (``--remote-debugging-pipe`` is added).
        profile: an empty folder for its profile.
    """

    def __init__(self, executable: Path, flags: Sequence[str], profile: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._answers, from_browser = os.pipe()
        argv = [str(executable), *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}"]
        self.pid = os.posix_spawn(
            str(executable),
            [*argv, "about:blank"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, to_browser, 3),
                (os.POSIX_SPAWN_DUP2, from_browser, 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        while chunk := os.read(self._answers, 1 << 16):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            with self._arrived:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._replies[message["id"]] = message
                    else:
                        self.events.append(message)
                self._arrived.notify_all()

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        """Send one command and wait for its result."""
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        with self._arrived:
            if not self._arrived.wait_for(lambda: ident in self._replies, timeout):
                raise TimeoutError(f"{method}: no answer within {timeout} s")
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise ProtocolError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    def open(self, url: str) -> Page:
        """A new tab that records its network requests and console, navigated to ``url``."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, attached["sessionId"])
        for domain in ("Network", "Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", {"url": url})
        return page

    def received(self, method: str, session: str) -> list[dict[str, Any]]:
        """The parameters of every event ``method`` of tab ``session`` so far."""
        with self._arrived:
            return [
                event["params"]
                for event in self.events
                if event["method"] == method and event.get("sessionId") == session
            ]

    def close(self) -> None:
        with contextlib.suppress(ProtocolError, TimeoutError, OSError):
            self.call("Browser.close", timeout=5)
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.1)
        os.close(self._commands)
        os.close(self._answers)


class Page:
    """A tab of a ``Browser``."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session)

    def received(self, method: str) -> list[dict[str, Any]]:
        """The parameters of every event ``method`` of this tab so far."""
        return self.browser.received(method, self.session)

    def evaluate(self, expression: str, timeout: float = 60) -> Any:
        """The value of a script run in the page (a promise is awaited)."""
        result = self.browser.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise ProtocolError(json.dumps(result["exceptionDetails"])[:2000])
        return result["result"].get("value")

    def settle(self, quiet: float = 1.5, timeout: float = 30) -> None:
        """Wait until the tab has made no new request for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        seen, since = -1, time.monotonic()
        while time.monotonic() - since < quiet:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the tab still made requests after {timeout} s")
            count = len(self.received("Network.requestWillBeSent"))
            if count != seen:
                seen, since = count, time.monotonic()
            time.sleep(0.1)

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The first truthy value of ``expression`` (a value JSON can hold: ``!!`` makes an
        element a boolean), evaluated every 0.1 s."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression} stayed false for {timeout} s")
            time.sleep(0.1)
        return value
