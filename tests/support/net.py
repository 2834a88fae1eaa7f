"""Loopback ports and waiting on something observable, for tests that start real processes.

    port = free_port()
    wait_until(lambda: server.ping(), 10, "redis answers PING")
    await async_wait_until(lambda: ledger.available, 10, "the ledger is available again")

A wait polls `predicate` until it returns a true value (which it returns) and fails with an
AssertionError naming `what` after `timeout` seconds; `what` may be a callable, evaluated only
then (a log tail, the last value seen). The predicate may raise to stop waiting early (a process
that exited).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["async_wait_until", "free_port", "wait_until"]

T = TypeVar("T")
What = str | Callable[[], str]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process may take it
    before the caller binds it, which is rare on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _timed_out(what: What, timeout: float) -> AssertionError:
    return AssertionError(f"timed out after {timeout:g} s waiting for: {what() if callable(what) else what}")


def wait_until(predicate: Callable[[], T], timeout: float, what: What, *, interval: float = 0.02) -> T:
    """Poll `predicate` every `interval` seconds until it is true; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout)
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T],
    timeout: float,  # noqa: ASYNC109 (wait_until's signature; the failure message names it)
    what: What,
    *,
    interval: float = 0.02,
) -> T:
    """`wait_until` on an event loop: sleeps with asyncio, so the loop keeps running."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout)
        await asyncio.sleep(interval)
