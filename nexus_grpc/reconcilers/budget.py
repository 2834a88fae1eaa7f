"""BudgetReconciler: cost estimates, budget status, hard-limit actions and per-request cost caps."""

from __future__ import annotations

from nexus_grpc.domain.decision import BudgetView
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode, PrivacyZone
from nexus_grpc.domain.money import NANO
from nexus_grpc.domain.months import reset_text
from nexus_grpc.pipeline.budget import request_views
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

_STATUS_NOTE = {
    BudgetStatus.UNSPECIFIED: "unavailable",
    BudgetStatus.NORMAL: "normal",
    BudgetStatus.SOFT_LIMIT: "soft_limit",
    BudgetStatus.HARD_LIMIT: "hard_limit",
}


RESTRICTED = PrivacyZone.RESTRICTED  # module constant: Enum attribute access is slow in 3.11


def _usd(nano: int) -> str:
    return f"{nano / NANO:.6f}".rstrip("0").rstrip(".") or "0"


class BudgetReconciler:
    name = "BudgetReconciler"
    fail_open = True  # a ledger fault must not stop routing (budget fails open)

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        views, applied = request_views(snap, intent.request.tenant)
        intent.budget = applied
        intent.notes["budget_status"] = _STATUS_NOTE[applied.status]
        budget = snap.fleet.config.routing.budget
        action = budget.hard_limit_action if budget is not None else "warn"
        cap = intent.policy.max_cost_nano
        if action == "warn" and applied.status == BudgetStatus.HARD_LIMIT:
            intent.notes["budget_action"] = "warn"
        # the tightest limit that can block: a scope at its hard limit blocks everything blockable,
        # otherwise a backend is blocked when its estimate exceeds the smallest headroom
        limiting = [v for v in views if v.limit_nano > 0 and v.status != BudgetStatus.UNSPECIFIED]
        if action == "warn" or not limiting:
            limiting = []
        if not limiting and cap is None:
            return
        cands = intent.candidates
        if cap is None and action == "block_cloud" and not any(c.zone != RESTRICTED for c in cands):
            return  # block_cloud never blocks restricted backends: nothing here can be excluded
        hard = any(v.status == BudgetStatus.HARD_LIMIT for v in limiting)
        if not hard and all(c.free for c in cands):
            return  # below every limit a free backend can neither cross it nor exceed a cap
        headroom = min((v.limit_nano - v.used_nano for v in limiting), default=0)
        block_all = action == "block_all"
        before = len(intent.candidates)
        kept: list[Candidate] = []
        hard_excluded = 0
        for c in intent.candidates:
            if limiting and (block_all or c.zone != RESTRICTED):
                cost = intent.cost(c)
                if hard or cost > headroom:
                    hard_excluded += 1
                    self._exclude_hard(intent, snap, c, views, cost, action)
                    continue
            if cap is not None:
                cost = intent.cost(c)
                if cost > cap:
                    intent.exclude(
                        self.name,
                        c,
                        ExclusionCode.COST_CAP,
                        f"estimated cost {_usd(cost)} USD exceeds max_cost_per_request {_usd(cap)} USD",
                        "lower max_output_tokens or the prompt size, use a cheaper backend, "
                        "or raise the policy's max_cost_per_request",
                    )
                    continue
            kept.append(c)
        intent.narrow(kept)
        if before and not kept and hard_excluded:
            intent.budget_emptied = True

    def _exclude_hard(
        self,
        intent: Intent,
        snap: Snapshot,
        c: Candidate,
        views: tuple[BudgetView, ...],
        cost: int,
        action: str,
    ) -> None:
        blocked = next(
            v
            for v in views
            if v.limit_nano > 0
            and v.status != BudgetStatus.UNSPECIFIED
            and (v.status == BudgetStatus.HARD_LIMIT or v.used_nano + cost > v.limit_nano)
        )
        intent.exclude(
            self.name,
            c,
            ExclusionCode.BUDGET_HARD_LIMIT,
            f"budget hard limit ({action}): scope {blocked.scope} has used "
            f"{_usd(blocked.used_nano)} of {_usd(blocked.limit_nano)} USD in {blocked.month}; "
            f"this request's estimate is {_usd(cost)} USD",
            f"route to a restricted (local) backend, raise the {blocked.scope} limit of "
            f"{_usd(blocked.limit_nano)} USD, or wait for the month to reset at {reset_text(snap.wall)}",
        )
