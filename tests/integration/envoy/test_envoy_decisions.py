"""One HTTP request is one decision, whatever `x-request-id` the client sends: through the real
Envoy on both shipped configs, requests that share an `x-request-id` are each charged, each settle
their own decision, and the id is only echoed as a label."""

from __future__ import annotations

from typing import Any

import pytest
from envoy_stack import NexusThread, StackFactory

from nexus_grpc._gen.nexus.v1 import decision_pb2
from nexus_grpc.domain.money import usd_to_nano
from nexus_grpc.ledger.base import Pending, SettleResult

pytestmark = pytest.mark.envoy

GPT35_1000 = 0.00125  # gpt-3.5-turbo estimate: 1000 input tokens, 500 output
HEADERS = {"x-nexus-model": "gpt-3.5-turbo", "x-nexus-estimated-tokens": "1000", "x-request-id": "same-id"}


def _find(nx: NexusThread, decision_id: str) -> Any:
    return nx.call(nx.runtime.engine.ledger.find(decision_id))


@pytest.mark.parametrize("name", ["ext_proc", "ext_authz"])
def test_requests_sharing_an_x_request_id_are_each_their_own_decision(
    make_stack: StackFactory, name: str
) -> None:
    stack = make_stack(name)
    nx = stack.nx
    before = nx.spent()
    responses = [stack.http(headers=HEADERS, body="{}") for _ in range(5)]
    assert [r.status for r in responses] == [200] * 5
    assert {r.headers["x-nexus-request-id"] for r in responses} == {"same-id"}  # echoed, a label
    decision_ids = [r.headers["x-nexus-decision-id"] for r in responses]
    assert len(set(decision_ids)) == 5
    received = stack.upstreams["openai"].wait_for(5)
    assert [r.headers["x-nexus-decision-id"] for r in received] == decision_ids
    assert {r.headers["x-nexus-request-id"] for r in received} == {"same-id"}
    # five charges, one per decision (the old request-id key charged the five once)
    assert nx.spent() - before == pytest.approx(5 * GPT35_1000, abs=1e-9)
    found = [_find(nx, d) for d in decision_ids]
    if name == "ext_proc":  # settled by the response each stream saw
        assert found == [SettleResult(False, usd_to_nano(GPT35_1000), True)] * 5  # as a repeat sees it
    else:  # charged provisionally at once, each waiting for its own report
        assert all(isinstance(f, Pending) and f.provisional and f.request_id == "same-id" for f in found), (
            found
        )
    assert nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert nx.reserved() == 0


def test_ext_authz_report_by_decision_id_settles_exactly_that_decision(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz")
    nx = stack.nx
    before = nx.spent()
    for _ in range(3):
        assert stack.http(headers=HEADERS, body="{}").status == 200
    seen = [r.headers for r in stack.upstreams["openai"].wait_for(3)]
    target = seen[1]  # the middle one: neither the oldest nor the latest of "same-id"
    report = decision_pb2.ReportOutcomeRequest(
        decision_id=target["x-nexus-decision-id"],
        request_id=target["x-nexus-request-id"],
        backend_id=target["x-nexus-backend"],
        model=target["x-nexus-model"],
        http_status=200,
        input_tokens=2000,
        output_tokens=100,
    )
    settled = nx.decision.ReportOutcome(report)
    assert settled.recorded and not settled.estimated
    assert settled.decision_id == target["x-nexus-decision-id"]
    # that decision's estimate (0.00125) is replaced by its usage (0.00115); the others are untouched
    assert nx.spent() - before == pytest.approx(3 * GPT35_1000 - GPT35_1000 + 0.00115, abs=1e-9)
    states = {h["x-nexus-decision-id"]: _find(nx, h["x-nexus-decision-id"]) for h in seen}
    assert isinstance(states[target["x-nexus-decision-id"]], SettleResult)
    others = [s for d, s in states.items() if d != target["x-nexus-decision-id"]]
    assert all(isinstance(s, Pending) and s.provisional for s in others), others
    # the same report again is a duplicate: charged once
    again = nx.decision.ReportOutcome(report)
    assert not again.recorded
    assert nx.spent() - before == pytest.approx(2 * GPT35_1000 + 0.00115, abs=1e-9)
    assert nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
