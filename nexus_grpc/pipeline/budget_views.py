"""Budget views of the scopes a request is charged to, read from the snapshot."""

from __future__ import annotations

from nexus_grpc.domain.decision import BudgetView, budget_status
from nexus_grpc.domain.enums import BudgetStatus
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.pipeline.snapshot import Snapshot

__all__ = ["request_views", "scope_view"]


_RANK = {
    BudgetStatus.UNSPECIFIED: 0,
    BudgetStatus.NORMAL: 1,
    BudgetStatus.SOFT_LIMIT: 2,
    BudgetStatus.HARD_LIMIT: 3,
}


def scope_view(snap: Snapshot, scope: str) -> BudgetView:
    budget = snap.fleet.config.routing.budget
    if budget is None:
        limit, soft = 0, 100.0
    else:
        limit = budget.monthly_limit_nano if scope == GLOBAL else budget.tenants.get(scope, 0)
        soft = budget.soft_limit_percent
    totals = snap.totals(scope, snap.month)
    if totals is None:
        return BudgetView(scope, snap.month, 0, 0, limit, BudgetStatus.UNSPECIFIED)
    spent, reserved = totals
    return BudgetView(scope, snap.month, spent, reserved, limit, budget_status(spent + reserved, limit, soft))


def request_views(snap: Snapshot, tenant: str) -> tuple[tuple[BudgetView, ...], BudgetView]:
    """Every scope's view and the one whose status applies: the worse of global and tenant;
    on a tie the tenant's if it has a limit, else global."""
    glob = scope_view(snap, GLOBAL)
    if not tenant:
        return (glob,), glob
    ten = scope_view(snap, tenant)
    g, t = _RANK[glob.status], _RANK[ten.status]
    applied = ten if t > g or (t == g and ten.limit_nano > 0) else glob
    return (glob, ten), applied
