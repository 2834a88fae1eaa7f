"""Fakes and builders for testing your own code against nexus-grpc, without mocks or patching.

- `FakeClock`, `FakeWall`: monotonic and wall time that move only when told to; pass them where
  `time.monotonic` / `time.time` would go (`TestServer(clock=...)`, `engine(clock=...)`).
- builders (`backend`, `model`, `policy`, `budget_config`, `config`, `engine`, `request`,
  `decide`, `report`, `served_outcome`, ...): typed configs, engines and requests without a TOML
  file, the same frozen values the config loader produces.
- `TestServer`: a real server (the `Runtime` `nexus-grpc serve` runs) on a free loopback port, on
  its own event loop thread, with a synchronous channel to it.

    from nexus_grpc import api
    from nexus_grpc.testing import FakeClock, TestServer

    clock = FakeClock()
    with TestServer(config_text=TOML, clock=clock) as server:   # or config_path=, or the demo fleet
        stub = api.DecisionServiceStub(server.channel)
        resp = stub.Decide(api.DecideRequest(model="gpt-4"))
        clock.advance(60)                                         # TTLs, windows, cooldowns move on

Everything here works from an installed package: it uses nothing from the source tree.
"""

from __future__ import annotations

from nexus_grpc.testing.builders import (
    backend,
    budget_config,
    config,
    decide,
    engine,
    memory_ledger,
    model,
    policy,
    price,
    report,
    request,
    served_outcome,
    zone,
)
from nexus_grpc.testing.clock import DEFAULT_WALL, FakeClock, FakeWall
from nexus_grpc.testing.server import DEFAULT_LISTEN, TestServer, TestServerError

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_WALL",
    "FakeClock",
    "FakeWall",
    "TestServer",
    "TestServerError",
    "backend",
    "budget_config",
    "config",
    "decide",
    "engine",
    "memory_ledger",
    "model",
    "policy",
    "price",
    "report",
    "request",
    "served_outcome",
    "zone",
]
