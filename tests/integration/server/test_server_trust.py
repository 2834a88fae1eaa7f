"""The trust boundary over gRPC, tried as a careless or hostile caller would: reused ids, a tenant
named like the global scope, malformed protobuf, an empty reload, admin RPCs on an open port."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from support.net import wait_until
from support.servers import SQLITE_TOML

from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.testing.server import TestServer

StubsOf = Callable[[TestServer], Any]
ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_id_reused_after_its_report_is_charged_every_time(
    small: TestServer, stubs_of: StubsOf
) -> None:
    s = stubs_of(small)
    before = s.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget.spent_usd
    for _ in range(3):
        route = s.decision.Decide(
            dpb.DecideRequest(model="gpt-4-turbo", request_id="reused"), timeout=5
        ).route
        out = s.decision.ReportOutcome(
            dpb.ReportOutcomeRequest(
                request_id="reused", backend_id=route.backend_id, success=True, cost_usd=0.25
            ),
            timeout=5,
        )
        assert (out.recorded, out.decision_id) == (True, route.decision_id)
    after = s.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget.spent_usd
    assert math.isclose(after - before, 0.75)


@pytest.mark.parametrize("name", ["global", "GLOBAL", "Global"])
def test_a_tenant_named_like_the_global_scope_is_refused(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf, name: str
) -> None:
    s = stubs_of(small)
    for method, request in [
        (s.decision.Decide, dpb.DecideRequest(model="m", tenant=name)),
        (s.decision.Explain, dpb.ExplainRequest(model="m", tenant=name)),
        (
            s.decision.ReportOutcome,
            dpb.ReportOutcomeRequest(request_id="x", backend_id="local", success=True, tenant=name),
        ),
        (s.budget.GetBudget, bpb.GetBudgetRequest(tenant=name)),
    ]:
        code, details = error_of(method, request)
        assert code == INVALID, details
        assert details.startswith("tenant:") and "reserved" in details


GLOBAL_LIMIT_TOML = """\
[server]
drain_seconds = 0
[routing.budget]
monthly_limit_usd = 1.0
hard_limit_action = "block_cloud"
[routing.budget.tenants]
"team" = 50.0
[ledger]
kind = "memory"
[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
[[backends.models]]
id = "gpt-4-turbo"
"""


def test_the_global_limit_holds_whatever_tenant_concurrent_callers_name(
    start_server: Callable[..., TestServer], stubs_of: StubsOf
) -> None:
    """200 concurrent Decides of 0.025 USD for a tenant whose own limit is far away: the global
    1.00 USD block_cloud limit is checked on every reservation, so at most 40 Route."""
    server = start_server(config_text=GLOBAL_LIMIT_TOML)
    s = stubs_of(server)
    request = dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000, tenant="team")
    results: list[str] = []
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(20):
            kind = s.decision.Decide(request, timeout=10).WhichOneof("decision")
            with lock:
                results.append(kind)

    threads = [threading.Thread(target=caller) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 200
    budget = s.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget
    assert budget.spent_usd + budget.reserved_usd <= 1.0 + 1e-9
    assert results.count("route") == 40


def test_malformed_protobuf_is_invalid_argument_and_logged_sparingly(
    small: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = small.channel.unary_unary(
        "/nexus.v1.DecisionService/Decide",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    caplog.set_level(logging.WARNING, logger="nexus_grpc")
    for junk in [b"\xff\xff\xff", b"\x0a\x05ab", b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"] * 100:
        with pytest.raises(grpc.RpcError) as info:
            raw(junk, timeout=5)
        assert info.value.code() == INVALID
        details = info.value.details() or ""
        assert details.startswith("malformed request: not a valid protobuf message")
        assert "Traceback" not in details
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(lines) <= 2  # once per interval, with a count; never a traceback per request
    assert not any(r.exc_info for r in caplog.records)
    assert small.runtime.gate.malformed.count == 300


def test_del_and_invisible_characters_are_refused_like_control_characters(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf
) -> None:
    s = stubs_of(small)
    for model in ["m\x7f", "m\u202e", "m\u200b", "m\x85"]:
        code, details = error_of(s.decision.Decide, dpb.DecideRequest(model=model))
        assert code == INVALID and details.startswith("model:"), details


def test_an_empty_or_truncated_reload_is_refused(
    start_server: Callable[..., TestServer],
    stubs_of: StubsOf,
    error_of: ErrorOf,
    small_toml: str,
    tmp_path: Path,
) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(small_toml)
    server = start_server(config_path=path)
    s = stubs_of(server)
    backends = [b.id for b in s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends]
    for text in ["", small_toml[: small_toml.index("[[backends]]")]]:
        path.write_text(text)
        code, details = error_of(s.admin.ReloadConfig, apb.ReloadConfigRequest())
        assert code == INVALID, details
        assert "allow_empty_fleet" in details
        assert [
            b.id for b in s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends
        ] == backends
    info = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5)
    assert any("2 config reloads failed" in r for r in info.degraded_reasons)
    path.write_text("[routing]\nallow_empty_fleet = true\n")
    s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=5)
    assert list(s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends) == []


def test_an_open_port_without_a_token_warns_at_start_and_names_the_variable(
    start_server: Callable[..., TestServer],
    stubs_of: StubsOf,
    error_of: ErrorOf,
    small_toml: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NEXUS_ADMIN_TOKEN", raising=False)
    caplog.set_level(logging.WARNING, logger="nexus_grpc")
    server = start_server(config_text=small_toml, listen="0.0.0.0:0")
    warnings = [r.getMessage() for r in caplog.records if "beyond loopback" in r.getMessage()]
    assert warnings and "NEXUS_ADMIN_TOKEN" in warnings[0]
    s = stubs_of(server)
    code, details = error_of(
        s.registry.SetBackendState,
        rpb.SetBackendStateRequest(backend_id="local", status=tpb.BACKEND_STATUS_DRAINING),
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "NEXUS_ADMIN_TOKEN" in details


def test_a_ledger_that_cannot_write_fails_priced_decides_cleanly_and_recovers(
    start_server: Callable[..., TestServer], stubs_of: StubsOf, error_of: ErrorOf, tmp_path: Path
) -> None:
    """The ledger's file stops taking writes (here: sqlite's query_only on the live connection,
    as a read-only remount would): priced Decides fail with UNAVAILABLE holding nothing, free ones
    still route, health turns NOT_SERVING and GetServerInfo says why; all of it recovers by itself."""
    path = tmp_path / "nexus.toml"
    path.write_text(SQLITE_TOML)
    server = start_server(config_path=path)
    s = stubs_of(server)
    db = server.runtime.engine.ledger._db  # type: ignore[attr-defined]
    priced = dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000)
    assert s.decision.Decide(priced, timeout=5).route.backend_id == "cloud"
    server.run(db.run(lambda conn: conn.execute("PRAGMA query_only=1")))
    code, details = error_of(s.decision.Decide, priced)
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert "budget ledger cannot store changes" in details and "read-only" in details
    cloud = s.registry.GetBackend(rpb.GetBackendRequest(backend_id="cloud"), timeout=5).backend
    assert cloud.in_flight == 1  # only the first, successful Decide holds a slot
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"
    health = s.health

    def status() -> int:
        return int(health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)

    wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, "health turns NOT_SERVING")
    info = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5)
    assert not info.ledger_available
    assert any("cannot store changes" in r for r in info.degraded_reasons)
    server.run(db.run(lambda conn: conn.execute("PRAGMA query_only=0")))
    wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, "health recovers")
    assert s.decision.Decide(priced, timeout=5).route.backend_id == "cloud"
    assert s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5).ledger_available
