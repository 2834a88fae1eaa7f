"""Queue holds in ext_proc (woken by state changes, beyond Envoy's message_timeout thanks to
override_message_timeout), their time-out, and a concurrent burst through Envoy."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from envoy_stack import Response, StackFactory
from support.net import wait_until
from support.upstream import Answer

pytestmark = pytest.mark.envoy

MESSAGE_TIMEOUT_S = 2.0  # deploy/envoy/ext_proc.yaml message_timeout


def test_loading_backend_becomes_healthy_during_the_hold_and_serves(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", max_wait_ms=6000)
    nx = stack.nx
    nx.set_state("gpu-2", "LOADING", eta_ms=60_000)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stack.http, "/v1/chat/completions", {"x-nexus-model": "reasoning"}, "{}")
        wait_until(lambda: nx.stats.holds == 1, "the request is held")
        # the point: Envoy's per-message timeout runs on its own clock, so real time passes it
        time.sleep(MESSAGE_TIMEOUT_S + 0.3)
        assert not pending.done()
        nx.set_state("gpu-2", "HEALTHY")  # an event: the hold decides again at once
        resp = pending.result(timeout=10)
    # a 200, not the 503 of a hold that timed out at max_wait_ms: woken by the change
    assert resp.status == 200, resp.body
    assert nx.stats.holds_timed_out == 0
    assert resp.json()["served_by"] == "gpu-2"
    assert stack.upstreams["gpu-2"].received[0].headers["x-nexus-model"] == "deepseek-r1:70b"
    assert nx.in_flight()["gpu-2"] == 0
    assert (
        stack.envoy.stats("ext_proc.override_message_timeout_received")[
            "http.llm_ingress.ext_proc.override_message_timeout_received"
        ]
        == 1
    )


def test_hold_times_out_with_503_and_retry_after(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", max_wait_ms=2500)
    stack.nx.set_state("gpu-2", "LOADING", eta_ms=60_000)
    started = time.monotonic()
    resp = stack.http(headers={"x-nexus-model": "reasoning"})
    elapsed = time.monotonic() - started
    assert resp.status == 503, resp.body
    assert elapsed >= 2.4  # held for max_wait_ms (2500), the behaviour under test
    assert elapsed < 10  # then answered: not left to Envoy's request timeout
    assert resp.headers["retry-after"] == "3"  # the wait (clamped to max_wait_ms 2500) in whole seconds
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["error"]["code"] == "queue_timeout"
    assert body["error"]["type"] == "service_unavailable"
    assert body["context"]["model"] == "deepseek-r1:70b"
    assert stack.nx.stats.holds_timed_out == 1
    assert stack.received()["gpu-2"] == 0


def test_burst_of_concurrent_requests_all_decided_with_no_leaked_slots(make_stack: StackFactory) -> None:
    # gpu-2 takes 2 at a time: the rest of its requests are held and woken as slots free up
    stack = make_stack("ext_proc", gpu2_concurrency=2, max_wait_ms=20_000)
    nx = stack.nx
    for upstream in stack.upstreams.values():
        upstream.answer = Answer(delay=0.05)
    models = {"gpt-4": "gpu-1", "qwen2:72b": "gpu-2", "gpt-3.5-turbo": "openai"}
    plan = [list(models)[i % 3] for i in range(45)]
    spent_before = nx.spent()

    def one(i: int) -> tuple[str, Response]:
        model = plan[i]
        headers = {"x-nexus-model": model, "x-nexus-estimated-tokens": "1000", "x-request-id": f"burst-{i}"}
        if i % 5 == 0:
            headers["x-nexus-priority"] = "high"
        return model, stack.http(headers=headers, body="{}")

    with ThreadPoolExecutor(15) as pool:
        results = list(pool.map(one, range(len(plan))))
    for model, resp in results:
        assert resp.status == 200, (model, resp.body)
        assert resp.json()["served_by"] == models[model]
    assert Counter(u for u in (r.json()["served_by"] for _, r in results)) == {
        "gpu-1": 15,
        "gpu-2": 15,
        "openai": 15,
    }
    assert stack.upstreams["gpu-2"].max_in_progress <= 2  # max_concurrency held through Envoy
    assert nx.stats.holds >= 1
    ids = [r.headers["x-nexus-request-id"] for _, r in results]
    assert sorted(ids) == sorted(f"burst-{i}" for i in range(len(plan)))
    assert nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert nx.reserved() == 0
    assert nx.spent() - spent_before == pytest.approx(15 * 0.00125, abs=1e-9)
    assert nx.stats.outcomes_reported == len(plan)
