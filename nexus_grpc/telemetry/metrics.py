"""Every metric defined once. The hot path only does integer additions into these aggregates;
the Prometheus collector turns them into metric families when scraped."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from operator import attrgetter

from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.enums import ExclusionCode

NS_PER_SECOND = 1_000_000_000
_STAGE_CODE = attrgetter("reconciler", "code")
CODE_LABEL = {code: code.name.lower() for code in ExclusionCode}

# nexus_pipeline_duration_seconds buckets, in nanoseconds (10 µs .. 100 ms)
PIPELINE_BUCKETS_NS = (
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
)

METRICS = {
    "nexus_decisions_total": "Decisions by verdict and reject code",
    "nexus_reconciler_duration_seconds": "Time spent in each pipeline stage",
    "nexus_reconciler_exclusions_total": "Backends excluded, by stage and exclusion code",
    "nexus_pipeline_duration_seconds": "Time to decide, whole pipeline incl. fallbacks",
    "nexus_budget_spent_usd": "Spend this UTC month (global and configured tenants)",
    "nexus_budget_status": "Budget status: 0 unknown, 1 normal, 2 soft limit, 3 hard limit",
    "nexus_backend_in_flight": "Requests routed to a backend and not yet reported",
    "nexus_ledger_available": "1 when the budget ledger's store is reachable",
    "nexus_ledger_writable": "1 when the budget ledger can store changes (0: priced decisions fail)",
    "nexus_config_info": "The loaded configuration's version",
    "nexus_outcomes_estimated_total": "Outcomes charged at the decision-time estimate",
    "nexus_outcomes_unknown_total": "Reports of decisions this server did not make (charged, no statistics)",
    "nexus_outcomes_clamped_total": "Outcomes charged the per-outcome ceiling [limits] max_charge_usd",
    "nexus_trace_spans_dropped_total": "Trace spans lost: the export queue was full or the export failed",
    "nexus_decision_log_dropped_total": "Decision log lines dropped because the queue was full",
}


def verdict_label(decision: Decision) -> tuple[str, str]:
    v = decision.verdict
    if isinstance(v, Route):
        return "route", ""
    if isinstance(v, Queue):
        return "queue", ""
    assert isinstance(v, Reject)
    return "reject", v.code.name.lower()


class Metrics:
    """Aggregates for one process. Labels are closed sets (verdicts, codes, stage names)."""

    __slots__ = ("decisions", "exclusions", "pipeline_buckets", "pipeline_count", "pipeline_sum_ns")

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], int] = {}
        self.exclusions: dict[tuple[str, ExclusionCode], int] = {}  # labelled when scraped
        self.pipeline_buckets = [0] * (len(PIPELINE_BUCKETS_NS) + 1)
        self.pipeline_sum_ns = 0
        self.pipeline_count = 0

    def record(self, decision: Decision, elapsed_ns: int) -> None:
        key = verdict_label(decision)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        counts = self.exclusions
        if decision.exclusion_counts:
            for stage_code, n in decision.exclusion_counts:
                counts[stage_code] = counts.get(stage_code, 0) + n
        elif decision.exclusions:
            for stage_code, n in Counter(map(_STAGE_CODE, decision.exclusions)).items():
                counts[stage_code] = counts.get(stage_code, 0) + n
        self.pipeline_buckets[bisect_left(PIPELINE_BUCKETS_NS, elapsed_ns)] += 1
        self.pipeline_sum_ns += elapsed_ns
        self.pipeline_count += 1
