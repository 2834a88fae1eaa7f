"""nexus.v1.DecisionService."""

from __future__ import annotations

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
from nexus_grpc.servicers.wire import decide_response

Ctx = grpc.aio.ServicerContext[Any, Any]


class DecisionServicer(dgrpc.DecisionServiceServicer):
    def __init__(self, engine: DecisionEngine, overloaded: Callable[[], bool] = lambda: False) -> None:
        self.engine = engine
        self.overloaded = overloaded  # near max_concurrent_rpcs: shed all but HIGH priority

    def _require_tenant(self) -> bool:
        budget = self.engine.config.routing.budget
        return budget is not None and budget.require_tenant

    @rpc
    async def Decide(self, request: dpb.DecideRequest, context: Ctx) -> bytes:  # type: ignore[override]
        """The response goes out in wire format written directly (`servicers/wire.py`)."""
        req = request_from_proto(request, self.engine.config.limits, require_tenant=self._require_tenant())
        if req.priority != Priority.HIGH and self.overloaded():
            raise Overloaded("server near max_concurrent_rpcs: shedding normal-priority decisions")
        return decide_response(await self.engine.decide(req))

    @rpc
    async def Explain(self, request: dpb.ExplainRequest, context: Ctx) -> dpb.ExplainResponse:
        req = request_from_proto(request, self.engine.config.limits, require_tenant=self._require_tenant())
        return explain_to_proto(self.engine.explain(req))

    @rpc
    async def ReportOutcome(
        self, request: dpb.ReportOutcomeRequest, context: Ctx
    ) -> dpb.ReportOutcomeResponse:
        outcome = outcome_from_proto(request, self.engine.config.limits)
        result = await self.engine.report_outcome(outcome)
        return dpb.ReportOutcomeResponse(
            recorded=result.settle.recorded,
            cost_usd=result.settle.charged_nano / NANO,
            estimated=result.settle.estimated,
            budget=budget_to_proto(result.budget),
            decision_id=result.decision_id,
        )
