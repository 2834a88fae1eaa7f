"""What the metrics exporters publish, as plain values read at export time.

The hot path only adds integers into in-process aggregates (`telemetry/metrics.py`); a scrape or
an OTLP export asks the composition root (`app/telemetry.py`) for one `Readings`, built by reading — never
writing — the engine's state. Telemetry therefore depends on no engine code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nexus_grpc.domain.enums import ExclusionCode


@dataclass(frozen=True, slots=True)
class Readings:
    decisions: dict[tuple[str, str], int]  # (decision, reject_code) -> count
    stage_ns: dict[str, int]  # stage (or RouteIndex) -> total ns
    stage_runs: dict[str, int]
    exclusions: dict[tuple[str, ExclusionCode], int]  # (stage, code) -> count
    pipeline_buckets: list[int]  # per PIPELINE_BUCKETS_NS bound, then +Inf (not cumulative)
    pipeline_sum_ns: int
    budget: dict[str, tuple[float, int]]  # scope -> (spent USD, BudgetStatus number)
    in_flight: dict[str, int]  # backend id -> in-flight decisions
    ledger_available: bool
    ledger_writable: bool
    config_version: str
    outcomes_estimated: int
    outcomes_unknown: int
    outcomes_clamped: int
    decision_log_dropped: int
    spans_dropped: int = 0
    extra: dict[str, int] = field(default_factory=dict)
