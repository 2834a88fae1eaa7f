"""A Redis restart must not leave the redis ledger with pooled connections to the old process:
once it is available again, it stays available (no second failure per stale connection)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from support.net import async_wait_until
from support.redis_server import RedisServer

from nexus_grpc.ledger.base import Reservation, month_of
from nexus_grpc.ledger.redis import RedisLedger

pytestmark = pytest.mark.redis

MONTH = month_of(time.time())


def test_no_stale_connections_after_a_restart(tmp_path: Path) -> None:
    async def body(server: RedisServer) -> None:
        ledger = RedisLedger(server.url, tmp_path / "journal.db", op_timeout=1.0, breaker_secs=0.1)
        await ledger.start()
        try:
            # several concurrent calls: the pool holds several connections
            await asyncio.gather(
                *(ledger.settle(f"a{i}", ["global"], 10, MONTH, estimated=False) for i in range(8))
            )
            with contextlib.suppress(OSError):
                server.command("SHUTDOWN", "SAVE")
            server.stop()
            assert await ledger.settle("during", ["global"], 5, MONTH, estimated=False)
            assert not ledger.available
            server.start()
            await async_wait_until(lambda: ledger.available, "the ledger sees the store again")
            failures = ledger.failures
            for i in range(20):
                reservation = Reservation(f"r{i}", ("global",), 1, MONTH, time.time() + 60)
                await asyncio.gather(
                    ledger.reserve(reservation),
                    ledger.settle(f"b{i}", ["global"], 1, MONTH, estimated=False),
                    ledger.get("global", MONTH),
                )
            assert ledger.failures == failures, "a pooled connection to the old process failed"
            assert ledger.available
            assert (await ledger.get("global", MONTH)).spent_nano == 8 * 10 + 5 + 20
        finally:
            await ledger.close()

    with RedisServer() as server:
        asyncio.run(body(server))
