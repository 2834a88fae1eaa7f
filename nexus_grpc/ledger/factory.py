"""Build the configured ledger (`[ledger] kind`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nexus_grpc.ledger.base import Ledger
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.ledger.redis import RedisLedger
from nexus_grpc.ledger.sqlite import SqliteLedger

LEDGER_KINDS = ("memory", "sqlite", "redis")


def make_ledger(kind: str, *, path: Path, url: str, wall: Callable[[], float] = time.time) -> Ledger:
    """`path` is the sqlite file (for `redis`: its outage journal); `url` the Redis URL; `wall`
    the wall clock (epoch seconds)."""
    if kind == "memory":
        return MemoryLedger()
    if kind == "sqlite":
        return SqliteLedger(path, wall=wall)
    if kind == "redis":
        return RedisLedger(url, path, wall=wall)
    raise ValueError(f"unknown ledger kind {kind!r}: expected one of {', '.join(LEDGER_KINDS)}")
