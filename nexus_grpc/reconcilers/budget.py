"""BudgetReconciler: cost estimates, budget status, hard-limit actions and per-request cost caps."""

from __future__ import annotations

from datetime import UTC, datetime

from nexus_grpc.domain.decision import BudgetView
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode, PrivacyZone
from nexus_grpc.domain.money import NANO
from nexus_grpc.ledger.base import next_month_start
from nexus_grpc.pipeline.budget import request_views
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot

_STATUS_NOTE = {
    BudgetStatus.UNSPECIFIED: "unavailable",
    BudgetStatus.NORMAL: "normal",
    BudgetStatus.SOFT_LIMIT: "soft_limit",
    BudgetStatus.HARD_LIMIT: "hard_limit",
}


def _usd(nano: int) -> str:
    return f"{nano / NANO:.6f}".rstrip("0").rstrip(".") or "0"


class BudgetReconciler:
    name = "BudgetReconciler"
    fail_open = True  # a ledger fault must not stop routing; caps still apply in the next run

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        request = intent.request
        tokens_in, tokens_out = request.estimated_input_tokens, request.output_tokens
        costs = intent.costs
        for c in intent.candidates:
            costs[c.id] = c.price.cost(tokens_in, tokens_out)
        views, applied = request_views(snap, request.tenant)
        intent.budget = applied
        intent.notes["budget_status"] = _STATUS_NOTE[applied.status]
        budget = snap.fleet.config.routing.budget
        action = budget.hard_limit_action if budget is not None else "warn"
        cap = intent.policy.max_cost_nano
        if action == "warn" and cap is None:
            if applied.status == BudgetStatus.HARD_LIMIT:
                intent.notes["budget_action"] = "warn"
            return
        before = len(intent.candidates)
        kept = []
        hard_excluded = 0
        for c in intent.candidates:
            cost = costs[c.id]
            blocked = self._blocking_scope(views, cost) if action != "warn" else None
            if blocked is not None and (action == "block_all" or c.zone != PrivacyZone.RESTRICTED):
                hard_excluded += 1
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.BUDGET_HARD_LIMIT,
                    f"budget hard limit ({action}): scope {blocked.scope} has used "
                    f"{_usd(blocked.used_nano)} of {_usd(blocked.limit_nano)} USD in {blocked.month}; "
                    f"this request's estimate is {_usd(cost)} USD",
                    f"route to a restricted (local) backend, raise the {blocked.scope} limit of "
                    f"{_usd(blocked.limit_nano)} USD, or wait for the month to reset at "
                    f"{_reset(snap.wall)}",
                )
            elif cap is not None and cost > cap:
                intent.exclude(
                    self.name,
                    c,
                    ExclusionCode.COST_CAP,
                    f"estimated cost {_usd(cost)} USD exceeds max_cost_per_request {_usd(cap)} USD",
                    "lower max_output_tokens or the prompt size, use a cheaper backend, "
                    "or raise the policy's max_cost_per_request",
                )
            else:
                kept.append(c)
        intent.candidates = kept
        if before and not kept and hard_excluded:
            intent.budget_emptied = True

    @staticmethod
    def _blocking_scope(views: tuple[BudgetView, ...], cost: int) -> BudgetView | None:
        for view in views:
            if view.limit_nano <= 0 or view.status == BudgetStatus.UNSPECIFIED:
                continue  # no limit, or never readable: budget fails open
            if view.status == BudgetStatus.HARD_LIMIT or view.used_nano + cost > view.limit_nano:
                return view
        return None


def _reset(wall: float) -> str:
    return datetime.fromtimestamp(next_month_start(wall), tz=UTC).strftime("%Y-%m-%d 00:00 UTC")
