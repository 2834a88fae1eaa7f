"""Wakes waiters (ext_proc Queue holds) when in-flight counts or backend state change."""

from __future__ import annotations

import asyncio

from nexus_grpc.domain.enums import Priority


class StateWatch:
    def __init__(self) -> None:
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def notify(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, []
        waiters.sort(key=lambda w: -w[0])  # HIGH priority first
        for _, fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(
        self,
        timeout: float,  # noqa: ASYNC109 - a hold's remaining time
        priority: Priority = Priority.NORMAL,
    ) -> bool:
        """True when something changed before `timeout` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (int(priority), fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
