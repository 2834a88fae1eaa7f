"""nexus.v1.BudgetService."""

from __future__ import annotations

import re
from typing import Any

import grpc

from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import budget_pb2_grpc as bgrpc
from nexus_grpc.domain import validate
from nexus_grpc.domain.decision import BudgetView, budget_status
from nexus_grpc.domain.enums import BudgetStatus
from nexus_grpc.domain.months import month_of
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.common import rpc
from nexus_grpc.servicers.convert import budget_to_proto

Ctx = grpc.aio.ServicerContext[Any, Any]
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")


class BudgetServicer(bgrpc.BudgetServiceServicer):
    def __init__(self, engine: DecisionEngine) -> None:
        self.engine = engine

    @rpc
    async def GetBudget(self, request: bpb.GetBudgetRequest, context: Ctx) -> bpb.GetBudgetResponse:
        config = self.engine.config
        validate.tenant(request.tenant, "tenant", config.limits.max_id_len)
        if request.month and not _MONTH.fullmatch(request.month):
            raise FieldError("month", f"{request.month!r} is not YYYY-MM")
        month = request.month or month_of(self.engine.wall())
        scope = request.tenant or GLOBAL
        budget = config.routing.budget
        limit = 0
        soft = 100.0
        if budget is not None:
            limit = budget.monthly_limit_nano if scope == GLOBAL else budget.tenants.get(scope, 0)
            soft = budget.soft_limit_percent
        known = self.engine.ledger.totals(scope, month) is not None or self.engine.ledger.available
        totals = await self.engine.ledger.get(scope, month)
        status = budget_status(totals.used_nano, limit, soft) if known else BudgetStatus.UNSPECIFIED
        view = BudgetView(scope, month, totals.spent_nano, totals.reserved_nano, limit, status)
        return bpb.GetBudgetResponse(budget=budget_to_proto(view))
