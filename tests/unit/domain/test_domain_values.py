"""Domain values: enums, budget status, summaries, money, outcomes, requests, live state."""

from __future__ import annotations

import re
from enum import IntEnum

import pytest

from nexus_grpc._gen.nexus.v1 import types_pb2
from nexus_grpc.domain import enums
from nexus_grpc.domain.backend import default_zone
from nexus_grpc.domain.decision import BudgetView, Exclusion, budget_status, summary_text
from nexus_grpc.domain.enums import BackendStatus, BudgetStatus, ExclusionCode, PrivacyZone
from nexus_grpc.domain.live import STAT_BUCKETS, LiveBackend, OutcomeStats
from nexus_grpc.domain.money import BUILTIN_PRICES, NANO, Price, PriceError, usd_to_nano
from nexus_grpc.domain.request import Outcome
from nexus_grpc.testing.builders import backend, model, request

USD = NANO
STAGES = (
    "RequestAnalyzer",
    "PrivacyReconciler",
    "BudgetReconciler",
    "TierReconciler",
    "QualityReconciler",
    "SchedulerReconciler",
)


@pytest.mark.parametrize(
    "enum",
    [
        enums.PrivacyZone,
        enums.TierMode,
        enums.Priority,
        enums.RejectCode,
        enums.ExclusionCode,
        enums.BudgetStatus,
        enums.BackendStatus,
    ],
)
def test_enum_numbers_equal_the_proto_numbers(enum: type[IntEnum]) -> None:
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.__name__).upper() + "_"
    proto = dict(getattr(types_pb2, enum.__name__).items())
    assert {prefix + m.name: int(m) for m in enum} == proto


# --- budget status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "limit", "soft", "status"),
    [
        (0, 0, 75.0, BudgetStatus.NORMAL),  # no limit
        (10**18, 0, 75.0, BudgetStatus.NORMAL),
        (0, USD, 75.0, BudgetStatus.NORMAL),
        (750_000_000 - 1, USD, 75.0, BudgetStatus.NORMAL),
        (750_000_000, USD, 75.0, BudgetStatus.SOFT_LIMIT),
        (USD - 1, USD, 75.0, BudgetStatus.SOFT_LIMIT),
        (USD, USD, 75.0, BudgetStatus.HARD_LIMIT),
        (USD + 1, USD, 75.0, BudgetStatus.HARD_LIMIT),
        (0, USD, 0.0, BudgetStatus.SOFT_LIMIT),  # soft at 0%: everything below the limit is soft
        (USD - 1, USD, 100.0, BudgetStatus.NORMAL),  # soft at 100%: never soft before hard
        (333_000_000, USD, 33.3, BudgetStatus.SOFT_LIMIT),
        (332_999_999, USD, 33.3, BudgetStatus.NORMAL),
    ],
)
def test_budget_status(used: int, limit: int, soft: float, status: BudgetStatus) -> None:
    assert budget_status(used, limit, soft) == status


@pytest.mark.parametrize(
    ("limit_usd", "soft"),
    [(100, 75.0), (100, 33.3), (100, 64.4), (50, 64.9), (1000, 66.4), (100, 1.1), (7, 2.2)],
)
def test_soft_limit_is_inclusive_for_decimal_percentages(limit_usd: int, soft: float) -> None:
    """Exactly soft% of the limit is SOFT_LIMIT, also when the
    percentage (e.g. 64.4) has no exact binary float representation."""
    limit = limit_usd * USD
    # the exact threshold in nano-USD: limit * soft / 100, computed in integers from the decimal text
    tenths = round(soft * 10)
    threshold = limit * tenths // 1000
    assert threshold * 1000 == limit * tenths  # an exact nano-USD amount
    assert budget_status(threshold - 1, limit, soft) == BudgetStatus.NORMAL
    assert budget_status(threshold, limit, soft) == BudgetStatus.SOFT_LIMIT


def test_budget_view_derived_values() -> None:
    view = BudgetView("global", "2025-06", 600_000_000, 300_000_000, USD, BudgetStatus.SOFT_LIMIT)
    assert view.used_nano == 900_000_000
    assert view.utilization_percent == pytest.approx(90.0)
    assert view.remaining_nano == 100_000_000
    over = BudgetView("global", "2025-06", 2 * USD, 0, USD, BudgetStatus.HARD_LIMIT)
    assert over.remaining_nano == 0
    assert over.utilization_percent == pytest.approx(200.0)
    unlimited = BudgetView("acme", "2025-06", 5 * USD, 0, 0, BudgetStatus.NORMAL)
    assert (unlimited.utilization_percent, unlimited.remaining_nano) == (0.0, 0)


# --- summary ---------------------------------------------------------------------------------


def _ex(backend_id: str, stage: str) -> Exclusion:
    return Exclusion(backend_id, "m", stage, ExclusionCode.UNHEALTHY, "r", "s")


@pytest.mark.parametrize(
    ("exclusions", "text"),
    [
        ([], "0 backends excluded by no stage"),
        ([_ex("a", "SchedulerReconciler")], "1 backend excluded by SchedulerReconciler"),
        (
            [_ex("a", "SchedulerReconciler"), _ex("b", "PrivacyReconciler"), _ex("a", "TierReconciler")],
            "2 backends excluded by PrivacyReconciler, TierReconciler, SchedulerReconciler",
        ),
        (
            [_ex("a", "Custom"), _ex("b", "BudgetReconciler")],
            "2 backends excluded by BudgetReconciler, Custom",
        ),
    ],
)
def test_summary_text(exclusions: list[Exclusion], text: str) -> None:
    assert summary_text(exclusions, STAGES) == text


# --- money -----------------------------------------------------------------------------------


def test_prices_are_exact_nano_usd_per_token() -> None:
    p = Price.per_1k(0.01, 0.03)
    assert (p.input_nano, p.output_nano) == (10_000, 30_000)
    assert p.cost(1000, 500) == 25_000_000
    assert Price.per_1k(0.000001, 0) == Price(1, 0)
    assert BUILTIN_PRICES["gpt-4-turbo"] == p
    assert BUILTIN_PRICES["claude-3-haiku-20240307"] == Price(250, 1250)
    assert BUILTIN_PRICES["gemini-1.5-flash"] == Price(350, 1050)
    assert len(BUILTIN_PRICES) == 10


@pytest.mark.parametrize("bad", [0.0000001, 0.0000015, -0.01])
def test_prices_finer_than_a_nano_usd_per_token_are_refused(bad: float) -> None:
    with pytest.raises(PriceError):
        Price.per_1k(bad, 0.0)


@pytest.mark.parametrize(
    ("usd", "nano"),
    [(0.0, 0), (0.1, 100_000_000), (0.025, 25_000_000), (1.0, USD), (123.456789012, 123_456_789_012)],
)
def test_usd_to_nano(usd: float, nano: int) -> None:
    assert usd_to_nano(usd) == nano


# --- request and outcome ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens_in", "max_out", "out"), [(1000, 0, 500), (1001, 0, 500), (1000, 7, 7), (0, 0, 0)]
)
def test_output_estimate(tokens_in: int, max_out: int, out: int) -> None:
    r = request("m", estimated_input_tokens=tokens_in, max_output_tokens=max_out)
    assert r.output_tokens == out
    assert r.total_tokens == tokens_in + out


def test_request_builder_generates_distinct_ids() -> None:
    a, b = request("m"), request("m")
    assert a.request_id and b.request_id and a.request_id != b.request_id
    assert request("m", request_id="fixed").request_id == "fixed"


@pytest.mark.parametrize(
    ("success", "status", "succeeded", "failure"),
    [
        (True, None, True, False),
        (False, None, False, True),
        (None, 200, True, False),
        (None, 299, True, False),
        (None, 302, False, True),
        (None, 400, False, False),  # client error: not the backend's fault
        (None, 404, False, False),
        (None, 408, False, True),
        (None, 429, False, True),
        (None, 500, False, True),
        (False, 422, False, False),
        (True, 500, True, False),  # an explicit success wins
        (None, None, False, True),
    ],
)
def test_outcome_success_and_failure(
    success: bool | None, status: int | None, succeeded: bool, failure: bool
) -> None:
    outcome = Outcome("r", "b", success=success, http_status=status)
    assert (outcome.succeeded, outcome.counts_as_failure) == (succeeded, failure)


# --- backends --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend_type", "zone"),
    [
        ("ollama", PrivacyZone.RESTRICTED),
        ("vllm", PrivacyZone.RESTRICTED),
        ("llamacpp", PrivacyZone.RESTRICTED),
        ("exo", PrivacyZone.RESTRICTED),
        ("lmstudio", PrivacyZone.RESTRICTED),
        ("openai", PrivacyZone.OPEN),
        ("anthropic", PrivacyZone.OPEN),
        ("google", PrivacyZone.OPEN),
        ("generic", PrivacyZone.UNSPECIFIED),
    ],
)
def test_default_zone_by_type(backend_type: str, zone: PrivacyZone) -> None:
    assert default_zone(backend_type) == zone


def test_backend_builder() -> None:
    b = backend("g", type="generic", zone="restricted", models=("x", model("y", context_length=8)))
    assert (b.zone, b.tier, b.priority, b.max_concurrency, b.pricing) == (
        PrivacyZone.RESTRICTED,
        1,
        50,
        0,
        None,
    )
    assert b.model("y") == model("y", context_length=8)
    assert b.model("z") is None
    with pytest.raises(ValueError, match="generic"):
        backend("g", type="generic")


# --- live state ------------------------------------------------------------------------------


def test_loading_eta_counts_down_and_stays_zero() -> None:
    live = LiveBackend(BackendStatus.HEALTHY, 60.0)
    live.set_status(BackendStatus.LOADING, eta_ms=5000, progress=10, now=100.0)
    assert live.loading_eta_ms(100.0) == 5000
    assert live.loading_eta_ms(102.5) == 2500
    assert live.loading_eta_ms(200.0) == 0
    assert live.status == BackendStatus.LOADING
    assert live.version == 1
    live.set_status(BackendStatus.HEALTHY, eta_ms=5000, progress=10, now=300.0)
    assert (live.loading_eta_ms(300.0), live.loading_progress, live.version) == (0, None, 2)


def test_latency_ema() -> None:
    live = LiveBackend(BackendStatus.HEALTHY, 60.0)
    live.observe_latency(100.0)
    assert live.latency_ema_ms == 100.0
    live.observe_latency(200.0)
    assert live.latency_ema_ms == 120.0
    live.observe_latency(120.0)
    assert live.latency_ema_ms == 120.0


def test_outcome_stats_window_is_bounded() -> None:
    stats = OutcomeStats(60.0)
    for i in range(1000):
        stats.record(i * 0.01, failure=i % 4 == 0, ttft_ms=float(i % 3) if i % 2 else None)
    count, failures, _ = stats.snapshot(10.0)
    assert (count, failures) == (1000, 250)
    assert len(stats._buckets) <= STAT_BUCKETS
    assert stats.snapshot(10.0 + 61.0)[:2] == (0, 0)
    stats.record(100.0, failure=False, ttft_ms=300.0)
    stats.record(100.5, failure=True, ttft_ms=None)
    assert stats.snapshot(101.0) == (2, 1, 300.0)
    stats.reset()
    assert stats.snapshot(101.0) == (0, 0, 0.0)
