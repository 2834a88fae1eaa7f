"""nexus.v1.DecisionService."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc as dgrpc
from nexus_grpc.domain.enums import Priority
from nexus_grpc.domain.money import NANO
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.servicers.common import Overloaded, rpc
from nexus_grpc.servicers.convert import (
    budget_to_proto,
    explain_to_proto,
    outcome_from_proto,
    request_from_proto,
)
from nexus_grpc.servicers.wire import ResponseEncoder
from nexus_grpc.telemetry.tracing import Tracing

Ctx = grpc.aio.ServicerContext[Any, Any]


class DecisionServicer(dgrpc.DecisionServiceServicer):
    def __init__(
        self,
        engine: DecisionEngine,
        overloaded: Callable[[], bool] = lambda: False,
        tracing: Tracing | None = None,
    ) -> None:
        self.engine = engine
        self.overloaded = overloaded  # near max_concurrent_rpcs: shed all but HIGH priority
        self.tracing = tracing  # set: decisions annotate their RPC's span
        self.responses = ResponseEncoder()  # Decide's responses, with the encoded reasons it reuses

    def _require_tenant(self) -> bool:
        budget = self.engine.config.routing.budget
        return budget is not None and budget.require_tenant

    @rpc
    async def Decide(self, request: dpb.DecideRequest, context: Ctx) -> bytes:  # type: ignore[override]
        """The response goes out in wire format written directly (`servicers/wire.py`)."""
        req = request_from_proto(request, self.engine.config.limits, require_tenant=self._require_tenant())
        if req.priority != Priority.HIGH and self.overloaded():
            raise Overloaded("server near max_concurrent_rpcs: shedding normal-priority decisions")
        if self.tracing is None:
            return self.responses.decide_response(await self.engine.decide(req))
        started = time.time_ns()
        decision = await self.engine.decide(req)
        self.tracing.decision(decision, started, req.tenant)
        return self.responses.decide_response(decision)

    @rpc
    async def Explain(self, request: dpb.ExplainRequest, context: Ctx) -> dpb.ExplainResponse:
        req = request_from_proto(request, self.engine.config.limits, require_tenant=self._require_tenant())
        started = time.time_ns()
        decision = self.engine.explain(req)
        if self.tracing is not None:
            self.tracing.decision(decision, started, req.tenant)
        return explain_to_proto(decision)

    @rpc
    async def ReportOutcome(
        self, request: dpb.ReportOutcomeRequest, context: Ctx
    ) -> dpb.ReportOutcomeResponse:
        outcome = outcome_from_proto(request, self.engine.config.limits)
        result = await self.engine.report_outcome(outcome)
        if self.tracing is not None:
            self.tracing.outcome(result.decision_id, result.settle.recorded, result.settle.charged_nano)
        return dpb.ReportOutcomeResponse(
            recorded=result.settle.recorded,
            cost_usd=result.settle.charged_nano / NANO,
            estimated=result.settle.estimated,
            budget=budget_to_proto(result.budget),
            decision_id=result.decision_id,
        )
