"""grpc.health.v1 and the graceful stop of a running Runtime (SPEC §1.5, §7)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.testing.server import TestServer

StubsOf = Callable[[TestServer], Any]
ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NAMES = [
    "",
    "nexus.v1.DecisionService",
    "nexus.v1.RegistryService",
    "nexus.v1.BudgetService",
    "nexus.v1.AdminService",
]


def status(s: Any, service: str) -> int:
    return int(s.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_serving_after_start(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(small)
    assert small.runtime.ready
    for name in NAMES:
        assert status(s, name) == SERVING, name
    code, _ = error_of(s.health.Check, health_pb2.HealthCheckRequest(service="nexus.v1.NoSuchService"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_not_serving_while_draining_then_unavailable(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf
) -> None:
    s = stubs_of(small)
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"
    started = time.monotonic()
    stopping = small.begin_stop(drain_seconds=1.0, grace_seconds=1.0)
    deadline = started + 0.8
    while status(s, "") != NOT_SERVING:
        assert time.monotonic() < deadline, "health still SERVING after the stop began"
        time.sleep(0.01)
    # still within the drain: health says NOT_SERVING, the server keeps answering
    for name in NAMES:
        assert status(s, name) == NOT_SERVING, name
    assert s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5).draining
    resp = s.decision.Decide(dpb.DecideRequest(model="primary"), timeout=5)
    assert resp.route.backend_id == "p1"
    assert not stopping.done()  # the drain lasts 1 s

    stopping.result(timeout=10)
    assert time.monotonic() - started >= 1.0
    code, details = error_of(s.decision.Decide, dpb.DecideRequest(model="m"))
    assert code == grpc.StatusCode.UNAVAILABLE, details
    code, _ = error_of(s.decision.Explain, dpb.ExplainRequest(model="m"))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_refusing_runtime_answers_unavailable(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf
) -> None:
    """The window between drain and stop: the gate refuses data-plane and admin RPCs."""
    s = stubs_of(small)
    small.runtime.refusing = True
    try:
        for method, request in [
            (s.decision.Decide, dpb.DecideRequest(model="m")),
            (
                s.decision.ReportOutcome,
                dpb.ReportOutcomeRequest(request_id="x", backend_id="y", success=True),
            ),
            (s.admin.GetServerInfo, apb.GetServerInfoRequest()),
        ]:
            code, details = error_of(method, request)
            assert code == grpc.StatusCode.UNAVAILABLE, details
    finally:
        small.runtime.refusing = False
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"


def test_test_server_context_manager_stops_cleanly(small_toml: str) -> None:
    with TestServer(config_text=small_toml) as server:
        port = server.port
        assert server.target == f"127.0.0.1:{port}"
        assert server.running
        grpc.channel_ready_future(server.channel).result(timeout=5)
    assert not server.running
    server.stop()  # idempotent
    # the port is free again: another server can take it
    with TestServer(config_text=small_toml, listen=f"127.0.0.1:{port}") as again:
        assert again.port == port


def test_second_server_on_a_taken_port_fails(small: TestServer, small_toml: str) -> None:
    """SO_REUSEPORT is off for a single process: the clash is an error, not a silent share."""
    clash = TestServer(config_text=small_toml, listen=small.target)
    with pytest.raises((OSError, RuntimeError), match=str(small.port)):
        clash.start()
    clash.stop()
    assert not clash.running
    stubs = grpc.insecure_channel(small.target)
    try:
        health = health_pb2_grpc.HealthStub(stubs)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
    finally:
        stubs.close()


def test_rpcs_beyond_max_concurrent_rpcs_are_refused_at_once(
    start_server: Callable[..., TestServer], small_toml: str
) -> None:
    """Long-lived streams (ext_proc holds, health watches) count; the next RPC gets
    RESOURCE_EXHAUSTED at once instead of piling up (SPEC §9)."""
    text = small_toml.replace("[server]\n", "[server]\nmax_concurrent_rpcs = 2\n", 1)
    server = start_server(config_text=text)
    health = health_pb2_grpc.HealthStub(server.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
    for watch in watches:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # both streams are open
    decide = server.channel.unary_unary(
        "/nexus.v1.DecisionService/Decide",
        request_serializer=dpb.DecideRequest.SerializeToString,
        response_deserializer=dpb.DecideResponse.FromString,
    )
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        decide(dpb.DecideRequest(model="m"), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 5  # refused, not queued until the deadline
    for watch in watches:
        watch.cancel()
    deadline = time.monotonic() + 10
    while True:  # the slots free up once the server has seen the cancellations
        try:
            assert decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.05)


def test_near_the_limit_normal_decisions_are_shed_before_high_ones(
    start_server: Callable[..., TestServer], small_toml: str
) -> None:
    """SPEC §1.1: HIGH requests are the last to be shed under overload."""
    text = small_toml.replace("[server]\n", "[server]\nmax_concurrent_rpcs = 4\n", 1)
    server = start_server(config_text=text)
    health = health_pb2_grpc.HealthStub(server.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(3)]
    for watch in watches:
        next(watch)
    decide = server.channel.unary_unary(
        "/nexus.v1.DecisionService/Decide",
        request_serializer=dpb.DecideRequest.SerializeToString,
        response_deserializer=dpb.DecideResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        decide(dpb.DecideRequest(request_id="n", model="m"), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "shedding normal-priority" in (info.value.details() or "")
    high = decide(dpb.DecideRequest(request_id="h", model="m", priority=2), timeout=10)  # PRIORITY_HIGH
    assert high.route.backend_id == "local", high
    report = server.channel.unary_unary(
        "/nexus.v1.DecisionService/ReportOutcome",
        request_serializer=dpb.ReportOutcomeRequest.SerializeToString,
        response_deserializer=dpb.ReportOutcomeResponse.FromString,
    )
    assert report(
        dpb.ReportOutcomeRequest(decision_id=high.route.decision_id, backend_id="local", success=True),
        timeout=10,
    ).recorded  # frees "local" (max_concurrency 1) for the next decision
    watches[0].cancel()
    deadline = time.monotonic() + 10
    while True:  # below the shedding line again: normal decisions pass
        try:
            assert decide(dpb.DecideRequest(request_id="h", model="m"), timeout=5).route.backend_id == "local"
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.05)
    for watch in watches[1:]:
        watch.cancel()
