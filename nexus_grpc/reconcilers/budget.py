"""BudgetReconciler: cost estimates, budget status, hard-limit actions and per-request cost caps."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_grpc.domain.decision import BudgetView, Exclusion
from nexus_grpc.domain.enums import BudgetStatus, ExclusionCode, PrivacyZone
from nexus_grpc.domain.money import NANO
from nexus_grpc.domain.months import reset_text
from nexus_grpc.pipeline.budget_views import request_views
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot

NAME = "BudgetReconciler"
_STATUS_NOTE = {
    BudgetStatus.UNSPECIFIED: "unavailable",
    BudgetStatus.NORMAL: "normal",
    BudgetStatus.SOFT_LIMIT: "soft_limit",
    BudgetStatus.HARD_LIMIT: "hard_limit",
}
RESTRICTED = PrivacyZone.RESTRICTED  # module constant: Enum attribute access is slow in 3.11
BUDGET_HARD_LIMIT, COST_CAP = ExclusionCode.BUDGET_HARD_LIMIT, ExclusionCode.COST_CAP


def _usd(nano: int) -> str:
    return f"{nano / NANO:.6f}".rstrip("0").rstrip(".") or "0"


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """What the stage decided for one request before looking at any candidate."""

    views: tuple[BudgetView, ...]
    applied: BudgetView  # the view whose status applies (the worse of global and tenant)
    action: str  # warn | block_cloud | block_all
    cap: int | None  # the effective max_cost_per_request, nano-USD
    limiting: tuple[BudgetView, ...]  # scopes whose limit can block (none under "warn")
    hard: bool  # a limiting scope is at its hard limit
    headroom: int  # the smallest limit - used over the limiting scopes

    @property
    def idle(self) -> bool:
        """Nothing can be excluded: no blocking limit and no cost cap."""
        return not self.limiting and self.cap is None


def budget_check(snap: Snapshot, tenant: str, cap: int | None) -> BudgetCheck:
    """`cap`: the effective policy's max_cost_per_request (nano-USD), if any."""
    views, applied = request_views(snap, tenant)
    budget = snap.fleet.config.routing.budget
    action = budget.hard_limit_action if budget is not None else "warn"
    limiting = (
        ()
        if action == "warn"
        else tuple(v for v in views if v.limit_nano > 0 and v.status != BudgetStatus.UNSPECIFIED)
    )
    hard = any(v.status == BudgetStatus.HARD_LIMIT for v in limiting)
    headroom = min((v.limit_nano - v.used_nano for v in limiting), default=0)
    return BudgetCheck(views, applied, action, cap, limiting, hard, headroom)


def budget_code(check: BudgetCheck, zone: PrivacyZone, cost: int) -> ExclusionCode | None:
    """The budget verdict of a backend in `zone` whose estimate for this request is `cost`."""
    if (
        check.limiting
        and (check.action == "block_all" or zone != RESTRICTED)
        and (check.hard or cost > check.headroom)
    ):
        return BUDGET_HARD_LIMIT
    if check.cap is not None and cost > check.cap:
        return COST_CAP
    return None


def budget_exclusion(
    check: BudgetCheck, code: ExclusionCode, c: Candidate, model: str, cost: int, snap: Snapshot
) -> Exclusion:
    if code == COST_CAP:
        cap = check.cap or 0
        return Exclusion(
            c.id,
            model,
            NAME,
            COST_CAP,
            f"estimated cost {_usd(cost)} USD exceeds max_cost_per_request {_usd(cap)} USD",
            "lower max_output_tokens or the prompt size, use a cheaper backend, "
            "or raise the policy's max_cost_per_request",
        )
    blocked = next(
        v for v in check.limiting if v.status == BudgetStatus.HARD_LIMIT or v.used_nano + cost > v.limit_nano
    )
    return Exclusion(
        c.id,
        model,
        NAME,
        BUDGET_HARD_LIMIT,
        f"budget hard limit ({check.action}): scope {blocked.scope} has used "
        f"{_usd(blocked.used_nano)} of {_usd(blocked.limit_nano)} USD in {blocked.month}; "
        f"this request's estimate is {_usd(cost)} USD",
        f"route to a restricted (local) backend, raise the {blocked.scope} limit of "
        f"{_usd(blocked.limit_nano)} USD, or wait for the month to reset at {reset_text(snap.wall)}",
    )


class BudgetReconciler:
    name = NAME
    fail_open = True  # a ledger fault must not stop routing (budget fails open)

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        check = budget_check(snap, intent.request.tenant, intent.policy.max_cost_nano)
        intent.budget = check.applied
        intent.notes["budget_status"] = _STATUS_NOTE[check.applied.status]
        if check.action == "warn" and check.applied.status == BudgetStatus.HARD_LIMIT:
            intent.notes["budget_action"] = "warn"
        if check.idle:
            return
        before = len(intent.candidates)
        kept: list[Candidate] = []
        hard_excluded = 0
        # the verdict depends only on the zone and the price: judge each pair once
        verdicts: dict[tuple[PrivacyZone, int], tuple[ExclusionCode | None, int]] = {}
        for c in intent.candidates:
            key = (c.zone, id(c.price))
            verdict = verdicts.get(key)
            if verdict is None:
                cost = intent.cost(c)
                verdict = verdicts[key] = (budget_code(check, c.zone, cost), cost)
            code, cost = verdict
            if code is None:
                kept.append(c)
                continue
            hard_excluded += code == BUDGET_HARD_LIMIT
            intent.exclusions.append(budget_exclusion(check, code, c, intent.model, cost, snap))
        intent.narrow(kept)
        if before and not kept and hard_excluded:
            intent.budget_emptied = True
