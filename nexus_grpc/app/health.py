"""What the process says about itself: the gRPC health statuses (SERVING only while ready, not
draining, and the ledger can store changes), the ledger's writability probed by upkeep, and the
degraded reasons `GetServerInfo` lists."""

from __future__ import annotations

import logging
from typing import Any

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2

from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.envoy import LIVENESS
from nexus_grpc.state.server import ServerState
from nexus_grpc.text import plural

log = logging.getLogger("nexus_grpc")
_STATUS = health_pb2.HealthCheckResponse


class HealthStatus:
    """The health service and the statuses it answers: "" (the server), every service that
    follows readiness (`follow`), and `liveness`, SERVING from the start."""

    def __init__(self) -> None:
        self.servicer = health_aio.HealthServicer()
        self.follow: list[str] = []  # health names that follow readiness, set once the services are
        self.serving = False
        self.ledger_unwritable = False

    async def starting(self) -> None:
        """NOT_SERVING for the server and every service; `liveness` SERVING."""
        await self._set(_STATUS.NOT_SERVING)
        await self.servicer.set(LIVENESS, _STATUS.SERVING)

    async def _set(self, status: Any) -> None:
        await self.servicer.set("", status)
        for name in self.follow:
            await self.servicer.set(name, status)

    async def update(self, state: ServerState) -> None:
        """SERVING while ready, not draining, and the ledger can store changes (a replica that
        cannot record money is taken out of rotation until its ledger recovers)."""
        serving = state.ready and not state.draining and not self.ledger_unwritable
        if serving != self.serving:
            self.serving = serving
            await self._set(_STATUS.SERVING if serving else _STATUS.NOT_SERVING)

    async def check_ledger(self, engine: DecisionEngine, state: ServerState) -> None:
        """Probe a ledger that failed to store a change; health follows; outcomes waiting for
        the ledger are retried once it stores changes."""
        ledger = engine.ledger
        if ledger.write_error is not None:
            await ledger.check_writable()
        unwritable = ledger.write_error is not None
        if unwritable != self.ledger_unwritable:
            self.ledger_unwritable = unwritable
            if unwritable:
                log.error(
                    "ledger cannot store changes (%s): health NOT_SERVING until it can", ledger.write_error
                )
            else:
                log.info("ledger stores changes again: health SERVING")
            await self.update(state)
        if not unwritable and engine.reports_waiting:
            await engine.retry_reports()


def degraded_reasons(engine: DecisionEngine, state: ServerState) -> list[str]:
    reasons = []
    ledger = engine.ledger
    if not ledger.available:
        reasons.append(f"ledger {ledger.kind} unavailable: budget fails open")
    if ledger.write_error is not None:
        reasons.append(
            f"ledger {ledger.kind} cannot store changes ({ledger.write_error}): priced decisions fail"
        )
    if engine.reports_waiting:
        reasons.append(f"{plural(engine.reports_waiting, 'outcome')} waiting for the ledger")
    if state.reload_failures:
        reasons.append(
            f"{plural(state.reload_failures, 'config reload')} failed; running {engine.config.version}"
        )
    return reasons
