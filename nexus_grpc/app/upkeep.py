"""The background upkeep of a serving process: once a second expire in-flight entries and check
the ledger; on `[routing.budget] reconciliation_interval_secs`, expire reservations nobody
settled and refresh the ledger's totals. With the demo fleet: its seeded spend and the backend
kept LOADING with a rolling ETA."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nexus_grpc.config.demo import DEMO_LOADING_BACKEND, DEMO_SEED_SPEND_USD
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.domain.money import usd_to_nano
from nexus_grpc.domain.months import month_of
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.ledger.memory import MemoryLedger

log = logging.getLogger("nexus_grpc")
DEFAULT_REFRESH_SECONDS = 60.0  # with no [routing.budget]


async def upkeep(engine: DecisionEngine, check_ledger: Callable[[], Awaitable[None]], *, demo: bool) -> None:
    """Once a second: expire in-flight entries; on its interval, refresh the ledger."""
    clock, wall = engine.clock, engine.wall
    last_refresh = clock()
    while True:
        await asyncio.sleep(1.0)
        try:
            await engine.expire_flights()
            await check_ledger()
            budget = engine.config.routing.budget
            interval = budget.reconciliation_interval_secs if budget else DEFAULT_REFRESH_SECONDS
            if clock() - last_refresh >= interval:
                last_refresh = clock()
                # reservations whose holder never settled them (e.g. a replica that died)
                await engine.ledger.expire(wall())
                await engine.ledger.refresh()
            if demo:
                roll_demo_loading(engine)
        except Exception:
            log.exception("upkeep failed; retrying in a second")


def seed_demo(engine: DecisionEngine) -> None:
    """The demo fleet starts with some spend this month and one backend LOADING."""
    ledger = engine.ledger
    if isinstance(ledger, MemoryLedger):
        ledger.seed_spend(GLOBAL, month_of(engine.wall()), usd_to_nano(DEMO_SEED_SPEND_USD))
    roll_demo_loading(engine)


def roll_demo_loading(engine: DecisionEngine) -> None:
    """Keep the demo's loading backend LOADING: a new ETA and progress once the last is near."""
    registry = engine.registry
    found = registry.get(DEMO_LOADING_BACKEND)
    if found is None:
        return
    live = found[1]
    if live.status != BackendStatus.LOADING or live.loading_eta_ms(engine.clock()) < 5000:
        progress = ((live.loading_progress or 0) + 17) % 90 + 5
        registry.set_state(
            DEMO_LOADING_BACKEND, BackendStatus.LOADING, eta_ms=20000, progress=progress, admin=False
        )
