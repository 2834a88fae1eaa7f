"""ext_authz through the real Envoy on deploy/envoy/ext_authz.yaml."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from envoy_stack import StackFactory
from support.upstream import Answer

from nexus_grpc._gen.nexus.v1 import decision_pb2

pytestmark = pytest.mark.envoy


def test_route_lands_on_the_chosen_upstream(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz")
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "x-request-id": "authz-1"})
    assert resp.status == 200, resp.body
    assert resp.json()["served_by"] == "gpu-1"
    assert resp.headers["x-nexus-request-id"] == "authz-1"
    got = stack.upstreams["gpu-1"].received[0].headers
    assert got["x-nexus-backend"] == "gpu-1"
    assert got["x-gateway-destination-endpoint"] == f"127.0.0.1:{stack.upstreams['gpu-1'].port}"
    assert got["x-nexus-model"] == "llama3:70b"
    assert got["x-nexus-request-id"] == "authz-1"
    resp = stack.http(headers={"x-nexus-model": "gpt-3.5-turbo"})
    assert resp.json()["served_by"] == "openai"
    assert stack.received() == {"gpu-1": 1, "gpu-2": 0, "openai": 1}


def test_route_takes_no_slot_and_charges_the_estimate_at_once(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz")
    nx = stack.nx
    cloud = stack.upstreams["openai"]
    cloud.answer = Answer(delay=0.5)
    before = nx.spent()
    headers = {
        "x-nexus-model": "gpt-3.5-turbo",
        "x-nexus-estimated-tokens": "1000",
        "x-request-id": "authz-2",
    }
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stack.http, "/v1/chat/completions", headers, "{}")
        cloud.wait_for(1)
        assert nx.backend("openai").in_flight == 0  # no response phase: no slot
        assert nx.spent() - before == pytest.approx(0.00125, abs=1e-9)  # charged before the answer
        assert pending.result().status == 200
    assert nx.reserved() == 0
    # the gateway settles it later with the id the backend saw
    seen = cloud.received[0].headers
    settled = nx.decision.ReportOutcome(
        decision_pb2.ReportOutcomeRequest(
            request_id=seen["x-nexus-request-id"],
            backend_id=seen["x-nexus-backend"],
            model=seen["x-nexus-model"],
            http_status=200,
            input_tokens=2000,
            output_tokens=100,
        )
    )
    assert settled.recorded
    assert nx.spent() - before == pytest.approx(0.00115, abs=1e-9)
    assert nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("claude-9", 404, "model_not_found"),
        ("gpt-3.5-turbo", 429, "budget_exhausted"),
        ("gpt-4-turbo", 503, "no_eligible_backend"),
    ],
)
def test_reject_status_body_and_headers(make_stack: StackFactory, model: str, status: int, code: str) -> None:
    stack = make_stack("ext_authz")
    if code == "budget_exhausted":
        stack.nx.seed_spend(100.0)
    resp = stack.http(headers={"x-nexus-model": model, "x-nexus-backend": "openai"})
    assert resp.status == status, resp.body
    assert resp.headers["content-type"] == "application/json"
    assert "x-nexus-rejection-reasons" in resp.headers
    assert ("retry-after" in resp.headers) is (status == 429)
    body = resp.json()
    assert body["error"]["code"] == code
    assert body["error"]["param"] == ("model" if status == 404 else None)
    assert "rejection_reasons" in body["context"] and "available_backends" in body["context"]
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_queue_answers_503_with_retry_after_at_once(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz", max_wait_ms=20_000)
    stack.nx.set_state("gpu-2", "LOADING", eta_ms=4_200)
    started = time.monotonic()
    resp = stack.http(headers={"x-nexus-model": "reasoning"})
    assert time.monotonic() - started < 1.5  # no hold in ext_authz
    assert resp.status == 503
    assert resp.headers["retry-after"] in ("4", "5")  # ceil of the remaining loading ETA
    assert resp.json()["error"]["code"] == "queued"
    assert stack.received()["gpu-2"] == 0


def test_malformed_header_and_forged_headers(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz")
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "x-nexus-max-output-tokens": "-3"})
    assert resp.status == 400
    assert resp.json()["error"]["param"] == "x-nexus-max-output-tokens"
    cloud = stack.upstreams["openai"]
    forged = {
        "x-nexus-backend": "openai",
        "x-gateway-destination-endpoint": f"127.0.0.1:{cloud.port}",
        "x-nexus-budget-status": "normal",
    }
    resp = stack.http(headers={"x-nexus-model": "gpt-4", **forged})
    assert resp.json()["served_by"] == "gpu-1"
    got = stack.upstreams["gpu-1"].received[0].headers
    assert got["x-nexus-backend"] == "gpu-1"  # one value, ours: no appended client copy
    assert "x-nexus-budget-status" not in got
    assert stack.received() == {"gpu-1": 1, "gpu-2": 0, "openai": 0}


def test_decision_service_down_fails_closed(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz", nexus_up=False)
    resp = stack.http(headers={"x-nexus-model": "gpt-4", "x-nexus-backend": "openai"})
    assert resp.status == 503  # status_on_error; never routed
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_burst_through_ext_authz(make_stack: StackFactory) -> None:
    stack = make_stack("ext_authz")
    nx = stack.nx
    before = nx.spent()
    models = {"gpt-4": "gpu-1", "qwen2:72b": "gpu-2", "gpt-3.5-turbo": "openai"}
    plan = [list(models)[i % 3] for i in range(30)]

    def one(model: str) -> str:
        resp = stack.http(headers={"x-nexus-model": model, "x-nexus-estimated-tokens": "1000"})
        assert resp.status == 200, resp.body
        return str(resp.json()["served_by"])

    with ThreadPoolExecutor(10) as pool:
        served = list(pool.map(one, plan))
    assert served == [models[m] for m in plan]
    assert nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert nx.spent() - before == pytest.approx(10 * 0.00125, abs=1e-9)
