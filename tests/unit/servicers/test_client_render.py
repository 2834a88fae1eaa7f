"""The CLI's rendering of a decision: a Reject's wait is given in milliseconds and readably."""

from __future__ import annotations

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.client import render_decision


def test_a_budget_reject_shows_its_wait_in_days_and_hours() -> None:
    response = dpb.DecideResponse(request_id="r", requested_model="m", resolved_model="m")
    response.reject.code = tpb.REJECT_CODE_BUDGET_EXHAUSTED
    response.reject.message = "Request rejected: 1 backend excluded by BudgetReconciler"
    response.reject.retry_after_ms = 2_611_195_824
    assert "  retry after 2611195824 ms (30 d 5 h)" in render_decision(response).splitlines()
