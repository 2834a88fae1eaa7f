"""Loopback ports and waiting on something observable, with a deadline, instead of sleeping and
hoping, for tests that start real servers and processes.

    port = free_port()
    wait_until(lambda: server.runtime.state.streams_active == 3, "three streams held")
    await async_wait_until(lambda: ledger.available, "the ledger is back", timeout=10)

A wait polls `predicate` every `interval` seconds until it returns a truthy value (which it
returns), or the deadline passes: then an AssertionError names `what` (a string, or a callable
giving the message at that moment: a log tail, the last value seen). The predicate may raise to
stop waiting early (a process that exited).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["async_wait_until", "free_port", "wait_until"]

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; another process may take it
    before the caller binds it, which is rare on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


DEFAULT_TIMEOUT = 10.0


def _message(what: str | Callable[[], str], timeout: float) -> str:
    said = what() if callable(what) else what
    return f"not within {timeout:g} s: {said}"


def wait_until(
    predicate: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.01,
) -> T:
    """Poll `predicate` (from this thread) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_message(what, timeout))
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], T],
    what: str | Callable[[], str],
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - a deadline for polling, not a call's timeout
    *,
    interval: float = 0.01,
) -> T:
    """Poll `predicate` on the running loop (other tasks run between looks) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_message(what, timeout))
        await asyncio.sleep(interval)


__all__ = ["DEFAULT_TIMEOUT", "async_wait_until", "wait_until"]
