"""Waiting on what a test can observe, with a deadline, instead of sleeping and hoping.

    wait_until(lambda: server.runtime.state.streams_active == 3, "three streams held")
    await async_wait_until(lambda: ledger.available, "the ledger is back", timeout=10)

The predicate is polled every `interval` seconds until it returns a truthy value (returned), or
the deadline passes: then an AssertionError names `what` (a string, or a callable giving the
message at that moment, for a message that shows the last values seen)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

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
