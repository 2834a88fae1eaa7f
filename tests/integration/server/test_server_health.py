"""grpc.health.v1 and the graceful stop of a running Runtime."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.net import wait_until

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
    "envoy.service.ext_proc.v3.ExternalProcessor",
    "envoy.service.auth.v3.Authorization",
    "readiness",  # what endpoint-picking gateways check, with liveness
]


def status(s: Any, service: str) -> int:
    return int(s.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_serving_after_start(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(small)
    assert small.runtime.ready
    for name in [*NAMES, "liveness"]:
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
    # well within the 1 s drain, so the checks below still see it
    wait_until(lambda: status(s, "") == NOT_SERVING, "health NOT_SERVING once the stop began", timeout=0.8)
    # still within the drain: health says NOT_SERVING, the server keeps answering
    for name in NAMES:
        assert status(s, name) == NOT_SERVING, name
    assert status(s, "liveness") == SERVING  # alive and answering, only not ready
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


class HeldLedger:
    """Holds every unary RPC that writes to the server's sqlite ledger: the ledger's one thread
    waits on an event, so ReportOutcome calls stay in progress until `release()`."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.event = threading.Event()
        ledger = server.runtime.engine.ledger
        self.blocker = server.submit(ledger._db.run(lambda conn: self.event.wait(30)))  # type: ignore[attr-defined]

    def release(self) -> None:
        self.event.set()
        self.blocker.result(timeout=10)


def _sqlite(text: str, tmp_path: Path, **server: int) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in server.items())
    text = text.replace("[server]\n", f"[server]\n{lines}", 1)
    return text.replace(
        '[ledger]\nkind = "memory"', f'[ledger]\nkind = "sqlite"\npath = "{tmp_path / "l.db"}"'
    )


def _report_futures(server: TestServer, n: int) -> list[grpc.Future[Any]]:
    report = server.channel.unary_unary(
        "/nexus.v1.DecisionService/ReportOutcome",
        request_serializer=dpb.ReportOutcomeRequest.SerializeToString,
        response_deserializer=dpb.ReportOutcomeResponse.FromString,
    )
    futures = [
        report.future(
            dpb.ReportOutcomeRequest(request_id=f"held-{i}", backend_id="x", success=True), timeout=20
        )
        for i in range(n)
    ]
    wait_until(
        lambda: server.runtime.state.unary_active >= n,
        lambda: f"the server has all {n} in progress: {server.runtime.state.unary_active}",
    )
    return futures


def _decide(server: TestServer) -> Any:
    return server.channel.unary_unary(
        "/nexus.v1.DecisionService/Decide",
        request_serializer=dpb.DecideRequest.SerializeToString,
        response_deserializer=dpb.DecideResponse.FromString,
    )


def test_unary_rpcs_beyond_max_concurrent_rpcs_are_refused_at_once(
    start_server: Callable[..., TestServer], small_toml: str, tmp_path: Path
) -> None:
    """Two ReportOutcome calls stuck on a slow disk fill a budget of 2: the next unary RPC gets
    RESOURCE_EXHAUSTED at once instead of piling up."""
    server = start_server(config_text=_sqlite(small_toml, tmp_path, max_concurrent_rpcs=2))
    held = HeldLedger(server)
    futures = _report_futures(server, 2)
    decide = _decide(server)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        decide(dpb.DecideRequest(model="m"), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_rpcs" in (info.value.details() or "")
    assert time.monotonic() - started < 5  # refused, not queued until the deadline
    held.release()
    assert all(f.result(timeout=10).recorded for f in futures)
    assert decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"


def _silent_until(gate: threading.Event) -> Iterator[bytes]:
    """A request stream that sends nothing until `gate` is set (a slow HTTP client)."""
    gate.wait(30)
    yield from ()


def test_streams_have_their_own_budget(start_server: Callable[..., TestServer], small_toml: str) -> None:
    """Envoy ext_proc streams held open (slow HTTP clients) fill their own budget, never the
    unary one: direct callers keep deciding, and one stream too many is refused at once."""
    text = small_toml.replace(
        "[server]\n", "[server]\nmax_concurrent_rpcs = 2\nmax_concurrent_streams = 3\n", 1
    )
    server = start_server(config_text=text)
    process = server.channel.stream_stream(
        "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    gates: list[threading.Event] = []
    calls = []
    for _ in range(3):
        gate = threading.Event()
        gates.append(gate)
        calls.append(process(_silent_until(gate), timeout=30))
    wait_until(
        lambda: server.runtime.state.streams_active >= 3,
        lambda: f"three streams held: {server.runtime.state.streams_active}",
    )
    extra = process(iter(()), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(extra)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_streams" in (info.value.details() or "")
    decide = _decide(server)
    for _ in range(5):  # the unary budget (2) is untouched by the three held streams
        assert decide(dpb.DecideRequest(model="gpt-4-turbo"), timeout=5).route.backend_id == "cloud"
    for gate, call in zip(gates, calls, strict=True):
        gate.set()
        call.cancel()


def test_near_the_limit_normal_decisions_are_shed_before_high_ones(
    start_server: Callable[..., TestServer], small_toml: str, tmp_path: Path
) -> None:
    """Above 90 % of the unary budget, normal-priority Decides are shed; HIGH ones still pass."""
    server = start_server(config_text=_sqlite(small_toml, tmp_path, max_concurrent_rpcs=4))
    held = HeldLedger(server)
    futures = _report_futures(server, 3)
    decide = _decide(server)
    with pytest.raises(grpc.RpcError) as info:
        decide(dpb.DecideRequest(request_id="n", model="m"), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "shedding normal-priority" in (info.value.details() or "")
    high = decide(dpb.DecideRequest(request_id="h", model="m", priority=2), timeout=10)  # PRIORITY_HIGH
    assert high.route.backend_id == "local", high
    held.release()
    assert all(f.result(timeout=10).recorded for f in futures)
    # below the shedding line again: normal decisions pass (on "cloud": "local" is busy with "h")
    assert (
        decide(dpb.DecideRequest(request_id="n", model="gpt-4-turbo"), timeout=5).route.backend_id == "cloud"
    )
