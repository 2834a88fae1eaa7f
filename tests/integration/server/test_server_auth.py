"""The admin rule and the client token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.app import Runtime
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.testing.server import TestServer

StubsOf = Callable[[TestServer], Any]
ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]
StartServer = Callable[..., TestServer]
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def mutations(s: Any) -> list[tuple[Any, Any]]:
    """Every admin RPC with a request that succeeds when allowed (on the small fleet)."""
    return [
        (
            s.registry.SetBackendState,
            rpb.SetBackendStateRequest(backend_id="p1", status=tpb.BACKEND_STATUS_DRAINING),
        ),
        (
            s.registry.UpsertBackend,
            rpb.UpsertBackendRequest(
                backend=tpb.Backend(
                    id="extra", url="http://127.0.0.1:9500", type="ollama", models=[tpb.Model(id="m")]
                )
            ),
        ),
        (s.registry.RemoveBackend, rpb.RemoveBackendRequest(backend_id="extra")),
    ]


def reads_work_without_token(s: Any) -> None:
    assert s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends
    assert s.registry.GetBackend(rpb.GetBackendRequest(backend_id="p1"), timeout=5).backend.id == "p1"
    assert s.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget.scope == "global"
    assert s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5).version
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).WhichOneof("decision") == "route"


def test_no_token_on_loopback_allows_mutations(small: TestServer, stubs_of: StubsOf) -> None:
    assert small.runtime.loopback_only
    s = stubs_of(small)
    for method, request in mutations(s):
        method(request, timeout=5)
    # an Authorization header is harmless when no token is configured
    method, request = mutations(s)[0]
    method(request, timeout=5, metadata=bearer("anything"))
    reads_work_without_token(s)


def test_admin_token_required_when_set(
    small: TestServer, stubs_of: StubsOf, error_of: ErrorOf, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert small.runtime.config.server.admin_token_env == "NEXUS_ADMIN_TOKEN"
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "s3cret-admin")
    s = stubs_of(small)
    for method, request in mutations(s):
        for metadata in (None, bearer("wrong"), bearer("s3cret-admin-"), [("authorization", "s3cret-admin")]):
            code, details = error_of(method, request, metadata=metadata)
            assert code == UNAUTH, details
        method(request, timeout=5, metadata=bearer("s3cret-admin"))
    assert s.registry.GetBackend(rpb.GetBackendRequest(backend_id="p1"), timeout=5).backend.status == (
        tpb.BACKEND_STATUS_DRAINING
    )
    reads_work_without_token(s)


def test_reload_config_is_an_admin_rpc(
    start_server: StartServer,
    stubs_of: StubsOf,
    error_of: ErrorOf,
    write_config: Callable[..., Any],
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_server(config_path=write_config(small_toml))
    s = stubs_of(server)
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "tok")
    code, _ = error_of(s.admin.ReloadConfig, apb.ReloadConfigRequest())
    assert code == UNAUTH
    assert s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=10, metadata=bearer("tok")).config_version


def test_admin_token_env_names_the_variable(
    start_server: StartServer,
    stubs_of: StubsOf,
    error_of: ErrorOf,
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = small_toml.replace("[server]\n", '[server]\nadmin_token_env = "NEXUS_TEST_ADMIN"\n', 1)
    server = start_server(config_text=text)
    s = stubs_of(server)
    method, request = mutations(s)[0]
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "not-this-one")  # not the configured variable
    method(request, timeout=5)
    monkeypatch.setenv("NEXUS_TEST_ADMIN", "this-one")
    code, _ = error_of(method, request, metadata=bearer("not-this-one"))
    assert code == UNAUTH
    method(request, timeout=5, metadata=bearer("this-one"))
    # set but empty = no token configured: loopback rule again
    monkeypatch.setenv("NEXUS_TEST_ADMIN", "")
    method(request, timeout=5)


def test_client_token_protects_the_data_plane(
    start_server: StartServer,
    stubs_of: StubsOf,
    error_of: ErrorOf,
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = small_toml.replace("[server]\n", '[server]\nclient_token_env = "NEXUS_TEST_CLIENT"\n', 1)
    server = start_server(config_text=text)
    s = stubs_of(server)
    monkeypatch.setenv("NEXUS_TEST_CLIENT", "client-tok")
    calls: list[tuple[Any, Any]] = [
        (s.decision.Decide, dpb.DecideRequest(model="m", request_id="c-1")),
        (s.decision.Explain, dpb.ExplainRequest(model="m")),
        (
            s.decision.ReportOutcome,
            dpb.ReportOutcomeRequest(request_id="c-1", backend_id="local", success=True),
        ),
    ]
    for method, request in calls:
        for metadata in (None, bearer("nope")):
            code, details = error_of(method, request, metadata=metadata)
            assert code == UNAUTH, details
    for method, request in calls:
        method(request, timeout=5, metadata=bearer("client-tok"))
    # health and reflection stay open
    resp = s.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_non_loopback_without_token_denies_admin(
    start_server: StartServer,
    stubs_of: StubsOf,
    error_of: ErrorOf,
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_server(config_text=small_toml, listen="0.0.0.0:0")
    assert not server.runtime.loopback_only
    s = stubs_of(server)
    for method, request in mutations(s):
        code, details = error_of(method, request)
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
    reads_work_without_token(s)
    # with an admin token configured, the token is what counts
    monkeypatch.setenv("NEXUS_ADMIN_TOKEN", "wide-open")
    method, request = mutations(s)[0]
    assert error_of(method, request)[0] == UNAUTH
    method(request, timeout=5, metadata=bearer("wide-open"))


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("localhost.example.com:50051", False),  # a hostname that merely starts with "localhost"
    ],
)
def test_loopback_rule_of_listen_addresses(small_toml: str, listen: str, loopback: bool) -> None:
    runtime = Runtime(load_config_text(small_toml, source="<test>"))
    runtime.listen = listen
    assert runtime.loopback_only is loopback
