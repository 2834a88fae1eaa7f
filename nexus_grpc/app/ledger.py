"""The ledger `[ledger]` names: memory here; sqlite and redis from `ledger.factory`, imported
only when asked for (redis is an optional dependency)."""

from __future__ import annotations

import time
from collections.abc import Callable

from nexus_grpc.config.schema import Config
from nexus_grpc.ledger.base import Ledger
from nexus_grpc.ledger.memory import MemoryLedger


def make_ledger(config: Config, wall: Callable[[], float] = time.time) -> Ledger:
    kind = config.ledger.kind
    if kind == "memory":
        return MemoryLedger()
    from nexus_grpc.ledger.factory import make_ledger as factory

    return factory(kind, path=config.ledger.path, url=config.ledger.url, wall=wall)
