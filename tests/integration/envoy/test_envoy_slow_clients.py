"""Slow HTTP clients hold ext_proc streams, never the decision service: through the real Envoy on
ext_proc.yaml, ten clients sending their body at 2 bytes/s against a budget of 4 streams, while
direct gRPC callers keep deciding. The budgets are small on purpose ([server]
max_concurrent_streams = 4, max_concurrent_rpcs = 4) and Envoy's request_timeout is shortened
from the shipped 90 s to 4 s."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from envoy_stack import StackFactory, raw_request
from support.net import wait_until

from nexus_grpc._gen.nexus.v1 import decision_pb2

pytestmark = pytest.mark.envoy

REQUEST_TIMEOUT_S = 4.0
SLOW_CLIENTS = 10
STREAMS = 4


def test_slow_body_clients_never_lock_direct_callers_out(make_stack: StackFactory) -> None:
    stack = make_stack(
        "ext_proc",
        read_body=True,
        server_extra=f"max_concurrent_rpcs = 4\nmax_concurrent_streams = {STREAMS}",
        envoy_replace={"request_timeout: 90s": f"request_timeout: {REQUEST_TIMEOUT_S:g}s"},
    )
    nx = stack.nx
    body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 40}]}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    with ThreadPoolExecutor(SLOW_CLIENTS) as pool:
        started = time.monotonic()
        slow = [
            pool.submit(raw_request, stack.envoy.port, head, body, byte_delay=0.5)
            for _ in range(SLOW_CLIENTS)
        ]
        wait_until(
            lambda: nx.runtime.state.streams_active >= STREAMS,
            lambda: f"every held client sent its headers: {nx.runtime.state.streams_active} streams",
            timeout=REQUEST_TIMEOUT_S,
        )
        decided = 0
        while time.monotonic() - started < REQUEST_TIMEOUT_S - 0.5:  # all the while they are held
            reply = nx.decision.Decide(decision_pb2.DecideRequest(model="gpt-4"), timeout=2)
            assert reply.WhichOneof("decision") == "route"
            decided += 1
            time.sleep(0.05)  # a caller's pace, not a wait: direct callers decide through the window
        results = [f.result(timeout=REQUEST_TIMEOUT_S + 5) for f in slow]
    assert decided >= 10
    statuses = sorted(r.status or 0 for r in results)
    # the streams within the budget end with Envoy's 408 at the request timeout, not a hang; the
    # ones over it were shed at once: nexus-grpc's 429 (JSON body, retry-after), not a gRPC error
    assert statuses == [408] * STREAMS + [429] * (SLOW_CLIENTS - STREAMS), statuses
    for r in results:
        if r.status == 408:  # ended by Envoy's request timeout, the behaviour under test
            assert REQUEST_TIMEOUT_S - 0.5 <= r.elapsed < REQUEST_TIMEOUT_S + 5
        else:  # shed at once: well before the request timeout
            assert r.elapsed < REQUEST_TIMEOUT_S / 2
            head = r.head.lower()
            assert b"\r\ncontent-type: application/json" in head and b"\r\nretry-after: 1" in head
    assert nx.stats.shed == SLOW_CLIENTS - STREAMS
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    # and all is released: the next request is served
    wait_until(lambda: nx.runtime.state.streams_active == 0, "every stream released", timeout=5)
    resp = stack.http(headers={"content-type": "application/json"}, body=body)
    assert resp.status == 200 and resp.json()["served_by"] == "gpu-1"


def test_a_direct_caller_over_its_own_budget_is_refused_at_once(make_stack: StackFactory) -> None:
    # the other direction: the unary budget is its own, refused with RESOURCE_EXHAUSTED
    stack = make_stack("ext_proc", server_extra="max_concurrent_rpcs = 1")
    state = stack.nx.runtime.state
    state.unary_active = 1  # one unary RPC in progress
    try:
        with pytest.raises(grpc.RpcError) as err:
            stack.nx.decision.Decide(decision_pb2.DecideRequest(model="gpt-4"), timeout=2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ext_proc streams are unaffected
        assert stack.http(headers={"x-nexus-model": "gpt-4"}).status == 200
    finally:
        state.unary_active = 0
