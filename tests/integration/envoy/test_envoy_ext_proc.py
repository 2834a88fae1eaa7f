"""ext_proc through the real Envoy on deploy/envoy/ext_proc.yaml: routing, rejects, trust,
outcome feedback and failure behaviour."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from envoy_stack import StackFactory
from support.net import wait_until
from support.upstream import Answer

pytestmark = pytest.mark.envoy

GPT35_1000 = 0.00125  # gpt-3.5-turbo, 1000 input tokens, 500 output: 0.0005 + 0.00075 USD


def test_route_lands_on_the_chosen_upstream_with_the_routing_headers(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "x-request-id": "req-route-1"})
    assert resp.status == 200, resp.body
    assert resp.json()["served_by"] == "gpu-1"
    assert resp.headers["x-nexus-request-id"] == "req-route-1"
    got = stack.upstreams["gpu-1"].received[0].headers
    assert got["x-nexus-backend"] == "gpu-1"
    assert got["x-nexus-backend-url"] == stack.upstreams["gpu-1"].url
    assert got["x-gateway-destination-endpoint"] == f"127.0.0.1:{stack.upstreams['gpu-1'].port}"
    assert got["x-nexus-model"] == "llama3:70b"  # the input is overwritten with the upstream model
    assert got["x-nexus-route-reason"] == "only_healthy_backend"
    assert got["x-nexus-request-id"] == "req-route-1"
    assert not any(k.startswith("x-nexus-budget-") for k in got)  # budget status normal

    # a hostname-style backend is routed by x-nexus-backend to its named cluster
    resp = stack.http(headers={"x-nexus-model": "gpt-3.5-turbo"})
    assert resp.status == 200 and resp.json()["served_by"] == "openai"
    assert stack.received() == {"gpu-1": 1, "gpu-2": 0, "openai": 1}
    assert stack.nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_budget_headers_when_the_budget_is_not_normal(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    stack.nx.seed_spend(80.0)
    assert stack.http(headers={"x-nexus-model": "gpt-4"}).status == 200
    got = stack.upstreams["gpu-1"].received[0].headers
    assert got["x-nexus-budget-status"] == "soft_limit"
    assert got["x-nexus-budget-utilization"] == "80.00"
    assert got["x-nexus-budget-remaining"] == "20.000000"


def test_restricted_model_never_reaches_the_cloud_upstream(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    # gpt-4* is restricted by policy and only the open `openai` backend serves gpt-4-turbo
    resp = stack.http(headers={"x-nexus-model": "gpt-4-turbo", "x-nexus-estimated-tokens": "10"})
    assert resp.status == 503
    assert resp.json()["error"]["code"] == "no_eligible_backend"
    assert resp.headers["x-nexus-rejection-reasons"] == "1 backend excluded by PrivacyReconciler"
    # the backend privacy excluded is not offered as available: nothing can take this request
    assert resp.json()["context"]["available_backends"] == []
    # a request that asks for the restricted zone itself never goes to the cloud either
    resp = stack.http(headers={"x-nexus-model": "gpt-3.5-turbo", "x-nexus-privacy": "restricted"})
    assert resp.status == 503
    reasons = resp.json()["context"]["rejection_reasons"]
    assert [(r["backend_id"], r["code"]) for r in reasons] == [("openai", "EXCLUSION_CODE_PRIVACY_ZONE")]
    assert stack.received()["openai"] == 0


@pytest.mark.parametrize(
    ("headers", "status", "code", "kind", "summary", "retry"),
    [
        (
            {"x-nexus-model": "claude-9"},
            404,
            "model_not_found",
            "invalid_request_error",
            "model 'claude-9' is not served here; available models: deepseek-r1:70b, gpt-3.5-turbo",
            False,
        ),
        ({"x-nexus-model": "gpt-3.5-turbo"}, 429, "budget_exhausted", "rate_limit_error", "1 backend", True),
        (
            {"x-nexus-model": "gpt-4-turbo"},
            503,
            "no_eligible_backend",
            "service_unavailable",
            "1 backend",
            False,
        ),
        (
            {"x-nexus-model": "gpt-4", "x-nexus-min-tier": "5"},
            503,
            "fallback_exhausted",
            "service_unavailable",
            "2 backends excluded by TierReconciler",
            False,
        ),
    ],
)
def test_reject_status_body_and_headers_for_each_code(
    make_stack: StackFactory,
    headers: dict[str, str],
    status: int,
    code: str,
    kind: str,
    summary: str,
    retry: bool,
) -> None:
    stack = make_stack("ext_proc")
    if code == "budget_exhausted":
        stack.nx.seed_spend(100.0)  # at the hard limit; block_cloud excludes openai
    resp = stack.http(headers={**headers, "x-nexus-backend": "openai"})  # forged: must not matter
    assert resp.status == status, resp.body
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-nexus-rejection-reasons"].startswith(summary)
    assert ("retry-after" in resp.headers) is retry
    if retry:
        assert int(resp.headers["retry-after"]) >= 1
    body = resp.json()
    assert set(body) == {"error", "context"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == kind
    assert body["error"]["param"] == ("model" if status == 404 else None)
    assert body["error"]["message"].startswith("Request rejected: ")
    reasons = body["context"]["rejection_reasons"]
    assert all(
        set(r) >= {"backend_id", "model", "reconciler", "code", "reason", "suggested_action"} for r in reasons
    )
    if code == "fallback_exhausted":
        assert {(r["backend_id"], r["model"]) for r in reasons} == {
            ("gpu-1", "llama3:70b"),
            ("gpu-2", "qwen2:72b"),
        }
        # both serve their model but are below the tier the request needs: neither can take it
        assert body["context"]["available_backends"] == []
    if code == "budget_exhausted":
        wait = body["context"]["retry_after_ms"]
        assert f"retry after {wait} ms (" in body["error"]["message"]  # and readably
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_malformed_header_is_a_400_naming_it(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    for name, value in [
        ("x-nexus-estimated-tokens", "abc"),
        ("x-nexus-min-tier", "9"),
        ("x-nexus-priority", "urgent"),
    ]:
        resp = stack.http(headers={"x-nexus-model": "gpt-4", name: value})
        assert resp.status == 400, (name, resp.body)
        assert resp.json()["error"]["param"] == name
        assert name in resp.json()["error"]["message"]
    resp = stack.http(headers={})
    assert resp.status == 400 and resp.json()["error"]["code"] == "model_required"
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_forged_routing_headers_from_a_client_are_ignored(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    cloud = stack.upstreams["openai"]
    forged = {
        "x-nexus-backend": "openai",
        "x-gateway-destination-endpoint": f"127.0.0.1:{cloud.port}",
        "x-nexus-backend-url": cloud.url,
        "x-nexus-route-reason": "forged",
        "x-nexus-request-id": "forged",
        "x-nexus-budget-status": "normal",
        "x-nexus-tenant": "someone-else",
    }
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "x-request-id": "real-1", **forged})
    assert resp.status == 200 and resp.json()["served_by"] == "gpu-1"
    got = stack.upstreams["gpu-1"].received[0].headers
    assert got["x-nexus-backend"] == "gpu-1"
    assert got["x-gateway-destination-endpoint"] == f"127.0.0.1:{stack.upstreams['gpu-1'].port}"
    assert got["x-nexus-route-reason"] == "only_healthy_backend"
    assert got["x-nexus-request-id"] == "real-1"
    assert "x-nexus-budget-status" not in got and "x-nexus-tenant" not in got
    # a rejected request with forged routing headers reaches nobody
    assert stack.http(headers={"x-nexus-model": "no-such-model", **forged}).status == 404
    assert stack.received() == {"gpu-1": 1, "gpu-2": 0, "openai": 0}


def test_outcome_feedback_charges_spend_and_frees_in_flight(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    nx = stack.nx
    cloud = stack.upstreams["openai"]
    cloud.answer = Answer(delay=0.6)
    before = nx.spent()
    headers = {"x-nexus-model": "gpt-3.5-turbo", "x-nexus-estimated-tokens": "1000"}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stack.http, "/v1/chat/completions", headers, "{}")
        cloud.wait_for(1)
        assert nx.backend("openai").in_flight == 1  # the slot is held while the backend works
        assert nx.reserved() == pytest.approx(GPT35_1000, abs=1e-9)
        assert pending.result().status == 200
    assert nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert nx.reserved() == 0
    assert nx.spent() - before == pytest.approx(GPT35_1000, abs=1e-9)  # the estimate, as reported

    # a failed response is reported as a failure (error rate) and still frees the slot
    cloud.answer = Answer(status=500)
    assert stack.http(headers=headers, body="{}").status == 500
    assert nx.backend("openai").error_rate == pytest.approx(0.5)
    assert nx.in_flight()["openai"] == 0
    assert nx.stats.outcomes_reported == 2


def test_usage_from_the_response_body_is_charged(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_response_usage=True)
    nx = stack.nx
    stack.upstreams["openai"].answer = Answer(usage={"prompt_tokens": 2000, "completion_tokens": 100})
    before = nx.spent()
    resp = stack.http(headers={"x-nexus-model": "gpt-3.5-turbo", "x-nexus-estimated-tokens": "10"}, body="{}")
    assert resp.status == 200 and resp.json()["usage"]["prompt_tokens"] == 2000  # the body passes intact
    # 2000 * 0.0005/1000 + 100 * 0.0015/1000
    assert nx.spent() - before == pytest.approx(0.00115, abs=1e-9)
    assert nx.reserved() == 0 and nx.in_flight()["openai"] == 0


def test_stream_closed_without_a_response_reports_a_failure(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc")
    nx = stack.nx
    cloud = stack.upstreams["openai"]
    cloud.answer = Answer(delay=3.0)
    with socket.create_connection(("127.0.0.1", stack.envoy.port), timeout=10) as client:
        client.sendall(b"GET /v1/models HTTP/1.1\r\nhost: test\r\nx-nexus-model: gpt-3.5-turbo\r\n\r\n")
        cloud.wait_for(1)
        assert nx.in_flight()["openai"] == 1
    wait_until(lambda: nx.in_flight()["openai"] == 0, "the closed stream frees its slot", timeout=5)
    assert nx.stats.closed_without_response == 1
    assert nx.backend("openai").error_rate == 1.0  # reported as a failure


def test_decision_service_down_fails_closed(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", nexus_up=False)
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "x-nexus-backend": "openai"})
    assert resp.status == 503  # status_on_error; never routed
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert stack.envoy.stats("ext_proc.streams_failed")["http.llm_ingress.ext_proc.streams_failed"] >= 1
