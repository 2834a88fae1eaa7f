"""A shed request through the real Envoy on deploy/envoy/inference-pool.yaml is the endpoint-picker
protocol's 429 with nexus-grpc's JSON error body and `retry-after`, not Envoy's `status_on_error`
(503): with `[server] max_concurrent_streams = 1`, a slow client holds the one stream (its body
arrives a byte at a time, and a full-duplex picker answers only at the body's end), and the next
request is answered at once, reaching no model server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from envoy_stack import PoolStack, raw_request

pytestmark = pytest.mark.envoy

JSON = {"content-type": "application/json"}


def chat(model: str, content: str = "hi") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}]}).encode()


def test_a_request_over_max_concurrent_streams_is_a_429_with_the_json_body(
    make_pool_stack: Callable[..., PoolStack],
) -> None:
    stack = make_pool_stack(server_extra="max_concurrent_streams = 1")
    state = stack.nx.runtime.state
    body = chat("llama3:70b", "x" * 40)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(raw_request, stack.envoy.port, head, body, byte_delay=0.04)
        deadline = time.monotonic() + 10
        while state.streams_active < 1:  # the slow client's stream is open, its body coming
            assert time.monotonic() < deadline and not slow.done(), state.streams_active
            time.sleep(0.01)
        started = time.monotonic()
        resp = stack.http(headers={**JSON, "x-request-id": "shed-pool-1"}, body=chat("llama3:70b"))
        elapsed = time.monotonic() - started
        assert not slow.done()  # the one stream was still held while the second was answered
        held = slow.result(timeout=30)
    assert resp.status == 429, (resp.status, resp.body[:300])
    assert elapsed < 1.0  # answered at once, not after the held stream
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["retry-after"] == "1"
    assert resp.headers["x-nexus-request-id"] == "shed-pool-1"
    error = resp.json()["error"]
    assert (error["code"], error["type"]) == ("overloaded", "rate_limit_error")
    assert "max_concurrent_streams (1 streams in progress)" in error["message"]
    assert "shed-pool-1" in error["message"]
    assert stack.nx.stats.shed == 1
    # the held request was picked and served; the shed one reached no model server
    assert held.status == 200, held.head
    assert sum(len(u.received) for u in stack.upstreams.values()) == 1
    deadline = time.monotonic() + 10
    while state.streams_active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.streams_active == 0
    assert stack.http(headers=JSON, body=chat("llama3:70b")).status == 200  # within budget again
