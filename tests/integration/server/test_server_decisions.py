"""Decide / Explain / ReportOutcome end to end over a real server."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.testing.server import TestServer

STAGES = [
    "RequestAnalyzer",
    "PrivacyReconciler",
    "BudgetReconciler",
    "TierReconciler",
    "QualityReconciler",
    "SchedulerReconciler",
]
StubsOf = Callable[[TestServer], Any]


def rid() -> str:
    return uuid.uuid4().hex


def in_flight(s: Any, backend_id: str) -> int:
    backend = s.registry.GetBackend(rpb.GetBackendRequest(backend_id=backend_id), timeout=5).backend
    return int(backend.in_flight)


def budget(s: Any, tenant: str = "") -> tpb.BudgetState:
    state: tpb.BudgetState = s.budget.GetBudget(bpb.GetBudgetRequest(tenant=tenant), timeout=5).budget
    return state


# -- the demo fleet: the README's three calls -----------------------------------------------------


def test_demo_fleet_routes_queues_and_rejects(demo: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(demo)
    route = s.decision.Decide(dpb.DecideRequest(model="gpt-4", request_id="r-1"), timeout=5)
    assert route.WhichOneof("decision") == "route"
    assert route.request_id == "r-1"
    assert route.requested_model == "gpt-4"
    assert route.resolved_model == "llama3:70b"
    assert route.route.backend_id == "gpu-1"
    assert route.route.model == "llama3:70b"
    assert route.route.privacy_zone == tpb.PRIVACY_ZONE_RESTRICTED
    assert route.budget.status == tpb.BUDGET_STATUS_SOFT_LIMIT

    queue = s.decision.Decide(dpb.DecideRequest(model="reasoning"), timeout=5)
    assert queue.WhichOneof("decision") == "queue"
    assert queue.queue.model == "deepseek-r1:70b"
    assert 1 <= queue.queue.estimated_wait_ms <= 30000
    assert queue.queue.retry_after_ms == queue.queue.estimated_wait_ms
    assert [e.code for e in queue.exclusions] == [tpb.EXCLUSION_CODE_LOADING]
    assert queue.request_id  # generated when empty

    missing = s.decision.Decide(dpb.DecideRequest(model="claude-3-opus"), timeout=5)
    assert missing.WhichOneof("decision") == "reject"
    assert missing.reject.code == tpb.REJECT_CODE_MODEL_NOT_FOUND
    assert missing.reject.message.startswith("Request rejected: ")
    assert "llama3:70b" in missing.reject.message  # lists the models that exist
    assert missing.cost_estimate.cost_usd == 0

    private = s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000), timeout=5
    )
    assert private.reject.code == tpb.REJECT_CODE_NO_ELIGIBLE_BACKEND
    assert private.reject.message == "Request rejected: 1 backend excluded by PrivacyReconciler"
    (reason,) = private.reject.reasons
    assert reason.backend_id == "openai"
    assert reason.reconciler == "PrivacyReconciler"
    assert reason.code == tpb.EXCLUSION_CODE_PRIVACY_ZONE
    assert reason.suggested_action
    assert list(private.exclusions) == list(private.reject.reasons)
    assert math.isclose(private.cost_estimate.cost_usd, 0.025)


# -- small configs ----------------------------------------------------------------------------


def test_route_reports_exclusions_and_alternates(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    resp = s.decision.Decide(dpb.DecideRequest(model="secret-model", request_id=rid()), timeout=5)
    assert resp.route.backend_id == "local"
    assert resp.route.backend_type == "ollama"
    assert resp.route.url == "http://127.0.0.1:9001"
    assert resp.route.reason == "only_healthy_backend"
    assert [(e.backend_id, e.code) for e in resp.exclusions] == [("cloud", tpb.EXCLUSION_CODE_PRIVACY_ZONE)]
    assert "secret-model" in resp.exclusions[0].reason


def test_loading_backend_queues_for_its_eta(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    s.registry.SetBackendState(
        rpb.SetBackendStateRequest(
            backend_id="local", status=tpb.BACKEND_STATUS_LOADING, loading_eta_ms=3000, reason="warming up"
        ),
        timeout=5,
    )
    resp = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert resp.WhichOneof("decision") == "queue", resp
    assert 2000 < resp.queue.estimated_wait_ms <= 3000
    assert resp.queue.retry_after_ms == resp.queue.estimated_wait_ms
    assert resp.queue.model == "m"
    assert [e.code for e in resp.exclusions] == [tpb.EXCLUSION_CODE_LOADING]
    assert in_flight(s, "local") == 0

    s.registry.SetBackendState(
        rpb.SetBackendStateRequest(backend_id="local", status=tpb.BACKEND_STATUS_HEALTHY), timeout=5
    )
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"


def test_saturated_backend_queues_until_outcome_frees_the_slot(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    first = rid()
    assert s.decision.Decide(dpb.DecideRequest(model="m", request_id=first), timeout=5).route.backend_id == (
        "local"
    )
    assert in_flight(s, "local") == 1

    resp = s.decision.Decide(dpb.DecideRequest(model="m", request_id=rid()), timeout=5)
    assert resp.WhichOneof("decision") == "queue", resp
    # no latency sample yet: the wait is queue.max_wait_ms
    assert resp.queue.estimated_wait_ms == 5000
    assert resp.queue.retry_after_ms == 5000
    assert [e.code for e in resp.exclusions] == [tpb.EXCLUSION_CODE_SATURATED]
    assert in_flight(s, "local") == 1  # a Queue takes no slot

    out = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(request_id=first, backend_id="local", success=True), timeout=5
    )
    assert out.recorded
    assert in_flight(s, "local") == 0
    again = s.decision.Decide(dpb.DecideRequest(model="m", request_id=rid()), timeout=5)
    assert again.route.backend_id == "local"


def test_decides_sharing_a_request_id_are_separate_decisions(small: TestServer, stubs_of: StubsOf) -> None:
    """A reused request id merges nothing: two Routes, two slots, two reservations, two charges."""
    s = stubs_of(small)
    same = rid()
    routes = [
        s.decision.Decide(
            dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000, request_id=same), timeout=5
        ).route
        for _ in range(2)
    ]
    assert [r.backend_id for r in routes] == ["cloud", "cloud"]
    assert routes[0].decision_id != routes[1].decision_id
    assert in_flight(s, "cloud") == 2
    assert math.isclose(budget(s).reserved_usd, 0.05)
    for _ in routes:
        out = s.decision.ReportOutcome(
            dpb.ReportOutcomeRequest(request_id=same, backend_id="cloud", success=True, cost_usd=0.5),
            timeout=5,
        )
        assert out.recorded
    assert in_flight(s, "cloud") == 0
    assert math.isclose(budget(s).reserved_usd, 0.0)
    assert math.isclose(budget(s).spent_usd, 1.0)


def test_reused_request_ids_cannot_exceed_max_concurrency(small: TestServer, stubs_of: StubsOf) -> None:
    """ "local" has max_concurrency 1: a second Decide with the same request id waits for it."""
    s = stubs_of(small)
    same = rid()
    first = s.decision.Decide(dpb.DecideRequest(model="m", request_id=same), timeout=5)
    assert first.route.backend_id == "local"
    second = s.decision.Decide(dpb.DecideRequest(model="m", request_id=same), timeout=5)
    assert second.WhichOneof("decision") == "queue", second
    assert in_flight(s, "local") == 1
    done = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(decision_id=first.route.decision_id, backend_id="local", success=True),
        timeout=5,
    )
    assert (done.recorded, done.decision_id) == (True, first.route.decision_id)
    assert in_flight(s, "local") == 0


def test_reject_codes(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    unknown = s.decision.Decide(dpb.DecideRequest(model="no-such-model"), timeout=5)
    assert unknown.reject.code == tpb.REJECT_CODE_MODEL_NOT_FOUND
    assert unknown.reject.retry_after_ms == 0

    # a request may tighten privacy: the only gpt-4-turbo backend is open
    private = s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", privacy=tpb.PRIVACY_ZONE_RESTRICTED), timeout=5
    )
    assert private.reject.code == tpb.REJECT_CODE_NO_ELIGIBLE_BACKEND
    assert [r.code for r in private.reject.reasons] == [tpb.EXCLUSION_CODE_PRIVACY_ZONE]

    # team-a's limit is 20 USD; 1M input tokens on gpt-4-turbo cost 10 + 15 USD (block_cloud)
    broke = s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1_000_000, tenant="team-a"), timeout=5
    )
    assert broke.reject.code == tpb.REJECT_CODE_BUDGET_EXHAUSTED, broke
    assert broke.reject.retry_after_ms > 0  # time to the month reset
    assert [r.code for r in broke.reject.reasons] == [tpb.EXCLUSION_CODE_BUDGET_HARD_LIMIT]
    assert broke.reject.reasons[0].reconciler == "BudgetReconciler"
    # the same request without the tenant fits the global 100 USD
    fits = s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1_000_000), timeout=5
    )
    assert fits.route.backend_id == "cloud"

    # strict min_tier 5: neither the primary nor its fallback qualifies
    tiered = s.decision.Decide(dpb.DecideRequest(model="primary", min_tier=5), timeout=5)
    assert tiered.reject.code == tpb.REJECT_CODE_FALLBACK_EXHAUSTED, tiered
    assert {(r.backend_id, r.model) for r in tiered.reject.reasons} == {("p1", "primary"), ("p2", "backup")}
    assert tiered.reject.message == "Request rejected: 2 backends excluded by TierReconciler"


def test_fallback_route(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    s.registry.SetBackendState(
        rpb.SetBackendStateRequest(backend_id="p1", status=tpb.BACKEND_STATUS_UNHEALTHY), timeout=5
    )
    resp = s.decision.Decide(dpb.DecideRequest(model="primary"), timeout=5)
    assert resp.route.backend_id == "p2"
    assert resp.route.model == "backup"
    assert resp.route.fallback_used
    assert resp.route.reason.startswith("fallback:backup:")
    assert [(e.backend_id, e.code) for e in resp.exclusions] == [("p1", tpb.EXCLUSION_CODE_UNHEALTHY)]


# -- Explain ----------------------------------------------------------------------------------


def test_explain_traces_and_has_no_side_effects(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    req: dict[str, Any] = dict(
        model="gpt-4-turbo", estimated_input_tokens=1000, tenant="team-a", request_id=rid()
    )
    for _ in range(3):
        exp = s.decision.Explain(dpb.ExplainRequest(**req), timeout=5)
        assert exp.decision.route.backend_id == "cloud"
        assert exp.decision.request_id == req["request_id"]
        assert [t.reconciler for t in exp.stages] == STAGES
        assert all(t.model == "gpt-4-turbo" for t in exp.stages)
        assert exp.stages[0].candidates_out == 1
        assert exp.stages[-1].candidates_in == 1
        assert [sc.backend_id for sc in exp.scores] == ["cloud"]
        assert exp.scores[0].priority_score == 40  # 100 - priority 60
        assert math.isclose(exp.decision.cost_estimate.cost_usd, 0.025)
    assert in_flight(s, "cloud") == 0
    assert budget(s).reserved_usd == 0
    assert budget(s, "team-a").reserved_usd == 0

    # the same bytes as a DecideRequest take the slot and reserve
    dec = s.decision.Decide(dpb.DecideRequest(**req), timeout=5)
    assert dec.route.backend_id == "cloud"
    assert in_flight(s, "cloud") == 1
    assert math.isclose(budget(s).reserved_usd, 0.025)
    assert math.isclose(budget(s, "team-a").reserved_usd, 0.025)


def test_explain_notes_budget_and_lists_every_exclusion(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    exp = s.decision.Explain(
        dpb.ExplainRequest(model="gpt-4-turbo", estimated_input_tokens=1_000_000, tenant="team-a"), timeout=5
    )
    assert exp.decision.reject.code == tpb.REJECT_CODE_BUDGET_EXHAUSTED
    by_stage = {t.reconciler: t for t in exp.stages}
    budget_stage = by_stage["BudgetReconciler"]
    assert budget_stage.candidates_in == 1
    assert budget_stage.candidates_out == 0
    assert [e.code for e in budget_stage.exclusions] == [tpb.EXCLUSION_CODE_BUDGET_HARD_LIMIT]


ROUND_ROBIN_TOML = """\
[routing]
strategy = "round_robin"
[ledger]
kind = "memory"
[[backends]]
id = "a"
url = "http://127.0.0.1:9101"
type = "ollama"
[[backends.models]]
id = "m"
[[backends]]
id = "b"
url = "http://127.0.0.1:9102"
type = "ollama"
[[backends.models]]
id = "m"
"""


def test_explain_does_not_advance_round_robin(
    start_server: Callable[..., TestServer], stubs_of: StubsOf
) -> None:
    s = stubs_of(start_server(config_text=ROUND_ROBIN_TOML))
    explained = {
        s.decision.Explain(dpb.ExplainRequest(model="m"), timeout=5).decision.route.backend_id
        for _ in range(3)
    }
    assert explained == {"a"}
    decided = [s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route for _ in range(3)]
    assert [r.backend_id for r in decided] == ["a", "b", "a"]
    assert [r.reason for r in decided] == [
        "round_robin:index_0",
        "round_robin:index_1",
        "round_robin:index_0",
    ]
    assert s.decision.Explain(dpb.ExplainRequest(model="m"), timeout=5).decision.route.backend_id == "b"


def test_explain_accepts_decide_request_bytes(small: TestServer) -> None:
    explain = small.channel.unary_unary(
        "/nexus.v1.DecisionService/Explain",
        request_serializer=None,
        response_deserializer=dpb.ExplainResponse.FromString,
    )
    raw = dpb.DecideRequest(
        model="secret-model", request_id="bytes-1", labels={"team": "x"}, priority=tpb.PRIORITY_HIGH
    ).SerializeToString()
    resp = explain(raw, timeout=5)
    assert resp.decision.request_id == "bytes-1"
    assert resp.decision.route.backend_id == "local"


# -- ReportOutcome ----------------------------------------------------------------------------


def test_reservation_then_settlement_idempotent(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    before = budget(s)
    assert before.spent_usd == 0 and before.reserved_usd == 0
    request_id = rid()
    dec = s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000, request_id=request_id), timeout=5
    )
    assert dec.route.backend_id == "cloud"
    assert math.isclose(dec.cost_estimate.cost_usd, 0.025)
    assert (dec.cost_estimate.input_tokens, dec.cost_estimate.output_tokens) == (1000, 500)
    assert math.isclose(budget(s).reserved_usd, 0.025)
    assert in_flight(s, "cloud") == 1

    report = dpb.ReportOutcomeRequest(
        request_id=request_id, backend_id="cloud", success=True, cost_usd=0.02, latency_ms=120
    )
    first = s.decision.ReportOutcome(report, timeout=5)
    assert first.recorded
    assert math.isclose(first.cost_usd, 0.02)
    assert not first.estimated
    assert math.isclose(first.budget.spent_usd, 0.02)
    assert first.budget.reserved_usd == 0
    assert in_flight(s, "cloud") == 0
    after = budget(s)
    assert math.isclose(after.spent_usd, 0.02)
    assert after.reserved_usd == 0

    # a duplicate (even with another cost) charges nothing and says what was charged
    dup = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(request_id=request_id, backend_id="cloud", success=True, cost_usd=5.0),
        timeout=5,
    )
    assert not dup.recorded
    assert math.isclose(dup.cost_usd, 0.02)
    assert math.isclose(budget(s).spent_usd, 0.02)


def test_outcome_without_cost_charges_the_estimate(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    request_id = rid()
    s.decision.Decide(
        dpb.DecideRequest(
            model="gpt-4-turbo", estimated_input_tokens=1000, request_id=request_id, tenant="team-a"
        ),
        timeout=5,
    )
    # http_status alone decides success; the retry went to another id: found by request_id anyway
    out = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(request_id=request_id, backend_id="local", http_status=500), timeout=5
    )
    assert out.recorded
    assert out.estimated
    assert math.isclose(out.cost_usd, 0.025)
    assert out.budget.scope == "team-a"
    assert in_flight(s, "cloud") == 0
    for tenant in ("", "team-a"):
        state = budget(s, tenant)
        assert math.isclose(state.spent_usd, 0.025)
        assert state.reserved_usd == 0


def test_unknown_request_id_is_still_charged(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    out = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(
            request_id=rid(), backend_id="cloud", success=True, cost_usd=1.5, tenant="t9"
        ),
        timeout=5,
    )
    assert out.recorded
    assert math.isclose(out.cost_usd, 1.5)
    assert math.isclose(budget(s, "t9").spent_usd, 1.5)
    assert budget(s, "t9").limit_usd == 0  # an unknown tenant has no limit


def test_rpc_error_is_not_an_internal_leak(small: TestServer, stubs_of: StubsOf) -> None:
    """A decision is OK, never an error status."""
    s = stubs_of(small)
    call = s.decision.Decide.with_call(dpb.DecideRequest(model="no-such-model"), timeout=5)
    assert call[1].code() == grpc.StatusCode.OK


@pytest.mark.parametrize("model", ["m", "gpt-4-turbo", "primary"])
def test_routes_carry_estimate_and_budget(small: TestServer, stubs_of: StubsOf, model: str) -> None:
    s = stubs_of(small)
    resp = s.decision.Decide(dpb.DecideRequest(model=model, estimated_input_tokens=10), timeout=5)
    assert resp.WhichOneof("decision") == "route"
    assert resp.cost_estimate.output_tokens == 5
    assert resp.budget.scope == "global"
    assert resp.budget.limit_usd == 100


def fleet_toml(n: int, *, zone_policy: bool = False, queue: bool = True) -> str:
    """n restricted backends serving "m", priorities 1..n; optionally a policy making "m" restricted
    while every backend is open (so all are excluded)."""
    parts = [
        '[ledger]\nkind = "memory"\n',
        f"[queue]\nenabled = {'true' if queue else 'false'}\nmax_wait_ms = 5000\n",
    ]
    if zone_policy:
        parts.append('[[routing.policies]]\nmodel_pattern = "m"\nprivacy = "restricted"\n')
    for i in range(n):
        kind = 'type = "generic"\nzone = "open"' if zone_policy else 'type = "ollama"'
        parts.append(
            f'[[backends]]\nid = "b{i:02d}"\nurl = "http://127.0.0.1:{9600 + i}"\n'
            f'{kind}\npriority = {i + 1}\n[[backends.models]]\nid = "m"\n'
        )
    if zone_policy:
        parts.append("[pricing.default]\ninput_per_1k = 0.0\noutput_per_1k = 0.0\n")
    return "\n".join(parts)


def test_decide_caps_exclusions_at_50_explain_returns_all(
    start_server: Callable[..., TestServer], stubs_of: StubsOf
) -> None:
    s = stubs_of(start_server(config_text=fleet_toml(60, zone_policy=True)))
    dec = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert dec.reject.code == tpb.REJECT_CODE_NO_ELIGIBLE_BACKEND
    assert len(dec.exclusions) == 50
    assert dec.exclusions_omitted == 10
    assert list(dec.reject.reasons) == list(dec.exclusions)
    assert dec.reject.message == "Request rejected: 60 backends excluded by PrivacyReconciler"
    exp = s.decision.Explain(dpb.ExplainRequest(model="m"), timeout=5)
    assert len(exp.decision.exclusions) == 60
    assert exp.decision.exclusions_omitted == 0


def test_alternates_are_at_most_three_in_score_order(
    start_server: Callable[..., TestServer], stubs_of: StubsOf
) -> None:
    s = stubs_of(start_server(config_text=fleet_toml(5)))
    resp = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert resp.route.backend_id == "b00"
    assert resp.route.reason == "highest_score:b00:99"  # (99*50 + 100*30 + 100*20) // 100
    assert list(resp.route.alternates) == ["b01", "b02", "b03"]


def test_queueing_off_rejects_with_the_wait(
    start_server: Callable[..., TestServer], stubs_of: StubsOf
) -> None:
    s = stubs_of(start_server(config_text=fleet_toml(1, queue=False)))
    s.registry.SetBackendState(
        rpb.SetBackendStateRequest(backend_id="b00", status=tpb.BACKEND_STATUS_LOADING, loading_eta_ms=3000),
        timeout=5,
    )
    resp = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert resp.reject.code == tpb.REJECT_CODE_NO_ELIGIBLE_BACKEND, resp
    assert 2000 < resp.reject.retry_after_ms <= 3000


def test_outcome_after_backend_removal_still_settles(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    request_id = rid()
    s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000, request_id=request_id), timeout=5
    )
    s.registry.RemoveBackend(rpb.RemoveBackendRequest(backend_id="cloud"), timeout=5)
    out = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(request_id=request_id, backend_id="cloud", success=True), timeout=5
    )
    assert out.recorded and out.estimated
    assert math.isclose(out.cost_usd, 0.025)
    state = budget(s)
    assert math.isclose(state.spent_usd, 0.025)
    assert state.reserved_usd == 0


def test_outcome_tokens_priced_and_scoped_to_the_decision(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    request_id = rid()
    s.decision.Decide(
        dpb.DecideRequest(
            model="gpt-4-turbo", estimated_input_tokens=1000, request_id=request_id, tenant="team-a"
        ),
        timeout=5,
    )
    # input from the report, output from the decision's estimate (500): 0.02 + 0.015
    out = s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(
            request_id=request_id, backend_id="cloud", success=True, input_tokens=2000, tenant="someone-else"
        ),
        timeout=5,
    )
    assert out.recorded and not out.estimated
    assert math.isclose(out.cost_usd, 0.035)
    # charged to the scopes recorded at Decide, not the report's tenant
    assert math.isclose(budget(s, "team-a").spent_usd, 0.035)
    assert budget(s, "someone-else").spent_usd == 0
    assert math.isclose(budget(s).spent_usd, 0.035)


def test_saturation_wait_follows_the_latency_ema(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    first = rid()
    s.decision.Decide(dpb.DecideRequest(model="m", request_id=first, stream=True), timeout=5)
    s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(
            request_id=first, backend_id="local", success=True, ttft_ms=300, latency_ms=4000
        ),
        timeout=5,
    )
    backend = s.registry.GetBackend(rpb.GetBackendRequest(backend_id="local"), timeout=5).backend
    assert backend.latency_ema_ms == 300  # fed by TTFT, not total latency
    assert (
        s.decision.Decide(dpb.DecideRequest(model="m", request_id=rid()), timeout=5).route.backend_id
        == "local"
    )
    queued = s.decision.Decide(dpb.DecideRequest(model="m", request_id=rid()), timeout=5)
    assert queued.queue.estimated_wait_ms == 300, queued
