"""Trust-boundary rules on a real server (a `TestServer`, called over gRPC through the generated
stubs), each tried the way the careless or hostile caller it guards against would:

- a report naming another backend is priced at the routed one;
- reports of decisions the server never made are charged but feed no statistics;
- a hostile policy glob cannot block the event loop;
- a reload of a file that cannot run is INVALID_ARGUMENT naming the key, the old config kept;
- a ledger that cannot store changes shows in the metrics and holds no reservation;
- the admin loopback rule goes by resolved addresses, not by how the host is spelled;
- concurrent Decides sharing a request id each need their own slot.

Self-contained on purpose: only `nexus_grpc.testing` and the generated stubs.
"""

from __future__ import annotations

import asyncio
import math
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.net import free_port, wait_until
from support.servers import SQLITE_TOML, TOKEN_VARS, stubs

from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import decision_pb2_grpc
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.state.server import loopback_only
from nexus_grpc.testing.server import TestServer

Start = Callable[..., TestServer]


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start() -> Iterator[Start]:
    """start(config_text=... | config_path=..., listen=...) -> a started TestServer, stopped at
    teardown."""
    servers: list[TestServer] = []

    def run(**kwargs: Any) -> TestServer:
        server = TestServer(**kwargs).start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


def rpc_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details() or ""


# --- reports are priced and counted by what the engine decided --------------------------------

# a and b serve gpt-4-turbo at the built-in table price (0.01 in / 0.03 out per 1k tokens), b is
# a's alternate; local is free and serves another model. A breaker opens after 3 outcomes at a
# 50 % error rate, so six counted failures would surely open it.
FLEET_TOML = """\
[server]
drain_seconds = 0
[routing]
strategy = "smart"
[routing.budget]
monthly_limit_usd = 100.0
hard_limit_action = "block_cloud"
[quality]
min_requests = 3
error_rate_threshold = 0.5
[ledger]
kind = "memory"
[[backends]]
id = "a"
url = "https://a.example.com"
type = "openai"
priority = 1
[[backends.models]]
id = "gpt-4-turbo"
[[backends]]
id = "b"
url = "https://b.example.com"
type = "openai"
priority = 20
[[backends.models]]
id = "gpt-4-turbo"
[[backends]]
id = "local"
url = "http://127.0.0.1:9001"
type = "ollama"
[[backends.models]]
id = "llama3:8b"
"""

TURBO = dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000)
TURBO_1K_USD = 0.025  # 1000 input tokens (0.01) + 500 output tokens (0.015) on gpt-4-turbo


def test_a_report_naming_a_free_unrelated_backend_is_charged_at_the_routed_price(start: Start) -> None:
    s = stubs(start(config_text=FLEET_TOML).channel)
    route = s.decision.Decide(TURBO, timeout=5).route
    assert (route.backend_id, list(route.alternates)) == ("a", ["b"])
    out = s.report(
        decision_id=route.decision_id,
        backend_id="local",  # free, and it does not serve gpt-4-turbo
        success=True,
        input_tokens=1000,
        output_tokens=500,
        ttft_ms=10,
    )
    assert (out.recorded, out.decision_id, out.estimated) == (True, route.decision_id, False)
    assert math.isclose(out.cost_usd, TURBO_1K_USD)  # a's price, not local's $0
    budget = s.global_budget()
    assert math.isclose(budget.spent_usd, TURBO_1K_USD)
    assert budget.reserved_usd == 0
    # nor counted anywhere: local did not serve the decision, and a was not named
    for backend_id in ("local", "a"):
        assert s.backend(backend_id).latency_ema_ms == 0
    assert s.backend("a").in_flight == 0  # the report still settled the decision


def _forged(n: int) -> dict[str, Any]:
    """Every other report names an unknown request id, the rest an unknown decision id of the
    form this server issues."""
    if n % 2:
        return {"decision_id": f"{0xF0F0F0F0F0F0F0F0 + n:016x}-{n:x}"}
    return {"request_id": f"forged-{n}"}


def test_forged_failure_reports_leave_a_healthy_backend_routing(start: Start) -> None:
    s = stubs(start(config_text=FLEET_TOML).channel)
    for n in range(6):
        out = s.report(backend_id="a", success=False, http_status=500, **_forged(n))
        assert (out.recorded, out.decision_id) == (True, "")  # charged ($0: no cost, no tokens), unknown
    a = s.backend("a")
    assert (a.status, a.error_rate, a.latency_ema_ms, a.avg_ttft_ms) == (tpb.BACKEND_STATUS_HEALTHY, 0, 0, 0)
    resp = s.decision.Decide(TURBO, timeout=5)
    assert resp.route.backend_id == "a", resp  # the breaker stayed shut
    assert list(resp.route.alternates) == ["b"]


def test_forged_ttft_reports_leave_scores_and_order_alone(start: Start) -> None:
    s = stubs(start(config_text=FLEET_TOML).channel)
    explain = dpb.ExplainRequest(model="gpt-4-turbo", estimated_input_tokens=1000, stream=True)
    before = s.decision.Explain(explain, timeout=5)
    assert [c.backend_id for c in before.scores] == ["a", "b"]
    for n in range(20):
        out = s.report(backend_id="a", success=True, ttft_ms=60_000, **_forged(n))
        assert out.decision_id == ""
    after = s.decision.Explain(explain, timeout=5)
    assert list(after.scores) == list(before.scores)
    assert after.decision.route.backend_id == before.decision.route.backend_id == "a"
    a = s.backend("a")
    assert (a.latency_ema_ms, a.avg_ttft_ms) == (0, 0)


# --- no input can block the event loop ------------------------------------------------------

# multi-star globs, the classic catastrophic cases for a backtracking matcher. The first one's
# suffix already rules the names out; they pass every cheap pre-filter (prefix, suffix, length)
# of the second, so the automaton itself decides
HOSTILE_GLOBS = ("*" + "?*" * 40 + "x", "*a" * 40 + "*b")


def long_model(n: int) -> str:
    """160 characters, ending in "b", with 39 "a": no policy matches (the second needs 40)."""
    return "ac" * 39 + "c" * 80 + "defghijklm"[n] + "b"


def _hostile_toml() -> str:
    policies = "".join(
        f'[[routing.policies]]\nmodel_pattern = "{glob}"\nprivacy = "restricted"\n' for glob in HOSTILE_GLOBS
    )
    return f"""\
[server]
drain_seconds = 0
[ledger]
kind = "memory"
{policies}[[backends]]
id = "local"
url = "http://127.0.0.1:9001"
type = "ollama"
[[backends.models]]
id = "{long_model(0)}"
"""


def test_a_hostile_policy_glob_never_blocks_decide_or_health(start: Start) -> None:
    """Decide on a 160-character model under multi-star policies, with a health Check in flight
    beside it: both answer within the timeout (a backtracking matcher held the loop ~14 s).
    Policies are matched on the first Decide of each model name, so every name here is new."""
    server = start(config_text=_hostile_toml())

    async def both() -> tuple[dpb.DecideResponse, health_pb2.HealthCheckResponse, list[str]]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
            check = health_pb2_grpc.HealthStub(channel).Check
            await channel.channel_ready()
            async with asyncio.timeout(5):
                decided, checked = await asyncio.gather(
                    decide(dpb.DecideRequest(model=long_model(0))),
                    check(health_pb2.HealthCheckRequest(service="")),
                )
                others = [(await decide(dpb.DecideRequest(model=long_model(n)))) for n in range(1, 10)]
                return decided, checked, [str(o.WhichOneof("decision")) for o in others]

    decided, checked, others = asyncio.run(both())
    assert decided.route.backend_id == "local", decided
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    assert others == ["reject"] * 9  # models nobody serves, each matched against the policies


# --- a reload of a file that cannot run -----------------------------------------------------

SMALL_TOML = """\
[server]
drain_seconds = 0
[ledger]
kind = "memory"
[[backends]]
id = "local"
url = "http://127.0.0.1:9001"
type = "ollama"
[[backends.models]]
id = "m"
[[backends]]
id = "other"
url = "http://127.0.0.1:9002"
type = "vllm"
[[backends.models]]
id = "m2"
"""


def test_a_reload_with_an_unbalanced_ipv6_url_is_invalid_argument_and_keeps_the_old_config(
    start: Start, tmp_path: Path
) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(SMALL_TOML)
    s = stubs(start(config_path=path).channel)
    version = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5).config_version
    path.write_text(SMALL_TOML.replace("http://127.0.0.1:9002", "http://[::1"))
    code, details = rpc_error(lambda: s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "nexus.toml" in details and "old one kept" in details
    assert "backends[1].url" in details and "http://[::1" in details
    assert "Traceback" not in details
    info = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5)
    assert info.config_version == version
    assert any("config reload failed" in r for r in info.degraded_reasons), info.degraded_reasons
    assert s.backend("other").url == "http://127.0.0.1:9002"
    assert s.decision.Decide(dpb.DecideRequest(model="m2"), timeout=5).route.backend_id == "other"


# --- a ledger that cannot store changes -----------------------------------------------------


def _gauge(port: int, name: str) -> float:
    """The value of an unlabelled gauge on the server's Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    values = [line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")]
    assert len(values) == 1, f"{name} not exported once: {values}"
    return float(values[0])


def test_a_ledger_write_failure_shows_in_the_metrics_and_reserves_nothing(
    start: Start, tmp_path: Path
) -> None:
    """The ledger's file stops taking writes (sqlite's query_only on the live connection, as a
    read-only remount would): nexus_ledger_writable reads 0 and the failed priced Decide holds
    no reservation; once writes work again the gauge reads 1 by itself."""
    port = free_port()
    path = tmp_path / "nexus.toml"
    path.write_text(SQLITE_TOML + f'[telemetry]\nprometheus_listen = "127.0.0.1:{port}"\n')
    server = start(config_path=path)
    s = stubs(server.channel)
    db = server.runtime.engine.ledger._db  # type: ignore[attr-defined]
    priced = dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000)
    assert _gauge(port, "nexus_ledger_writable") == 1
    assert _gauge(port, "nexus_ledger_available") == 1

    server.run(db.run(lambda conn: conn.execute("PRAGMA query_only=1")))
    code, details = rpc_error(lambda: s.decision.Decide(priced, timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE, details
    assert _gauge(port, "nexus_ledger_writable") == 0
    budget = s.global_budget()
    assert (budget.spent_usd, budget.reserved_usd) == (0, 0)
    assert s.backend("cloud").in_flight == 0

    server.run(db.run(lambda conn: conn.execute("PRAGMA query_only=0")))
    wait_until(lambda: _gauge(port, "nexus_ledger_writable") == 1, "nexus_ledger_writable back to 1")
    route = s.decision.Decide(priced, timeout=5).route
    assert route.backend_id == "cloud"
    assert math.isclose(s.global_budget().reserved_usd, TURBO_1K_USD)  # exactly this one


# --- the admin loopback rule goes by resolved addresses ---------------------------------------

FAKE_HOSTS = {
    "127.evil.test": ["0.0.0.0"],  # the wildcard: every interface
    "127.lan.test": ["10.0.0.1"],
    "127.mixed.test": ["127.0.0.1", "10.0.0.1"],
    "127.loop.test": ["127.0.0.1", "::1"],
}


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """socket.getaddrinfo answers FAKE_HOSTS names (everything else as usual); the loopback rule's
    cache is cleared around the test so no answer leaks in or out."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in FAKE_HOSTS:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (a, port or 0, 0, 0) if ":" in a else (a, port or 0),
                )
                for a in FAKE_HOSTS[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    loopback_only.cache_clear()
    yield
    loopback_only.cache_clear()


@pytest.mark.usefixtures("fake_dns")
@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.evil.test", False), ("127.lan.test", False), ("127.mixed.test", False), ("127.loop.test", True)],
)
def test_the_loopback_rule_resolves_names_that_start_with_127(host: str, loopback: bool) -> None:
    assert loopback_only(f"{host}:50051") is loopback


@pytest.mark.usefixtures("fake_dns")
def test_a_server_known_by_a_127_name_that_resolves_to_the_wildcard_refuses_admin_without_a_token(
    start: Start,
) -> None:
    """The server really listens on every interface (0.0.0.0), and its listen address is a name
    that starts with `127.` and resolves there. gRPC binds with the C library's resolver, which a
    test cannot redirect in-process, so the server binds the wildcard itself and is then known by
    the name; the `serve` subprocess test in test_server_process_trust.py binds the name itself."""
    server = start(config_text=SMALL_TOML, listen="0.0.0.0:0")
    server.runtime.listen = f"127.evil.test:{server.port}"
    assert not server.runtime.loopback_only
    s = stubs(server.channel)
    code, details = rpc_error(
        lambda: s.registry.SetBackendState(
            rpb.SetBackendStateRequest(backend_id="local", status=tpb.BACKEND_STATUS_DRAINING), timeout=5
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED, details
    assert "NEXUS_ADMIN_TOKEN" in details
    assert s.backend("local").status == tpb.BACKEND_STATUS_HEALTHY
    # the same server known by a name that resolves to loopback only: allowed
    server.runtime.listen = f"127.loop.test:{server.port}"
    s.registry.SetBackendState(
        rpb.SetBackendStateRequest(backend_id="local", status=tpb.BACKEND_STATUS_DRAINING), timeout=5
    )
    assert s.backend("local").status == tpb.BACKEND_STATUS_DRAINING


# --- concurrent Decides sharing one request id --------------------------------------------------

# one priced backend with a single slot, on a sqlite ledger: every reservation is a write on the
# ledger's thread, so the concurrent Decides interleave while the first one's write is stored
ONE_SLOT_TOML = """\
[server]
drain_seconds = 0
[routing.budget]
monthly_limit_usd = 100.0
hard_limit_action = "block_all"
[ledger]
kind = "sqlite"
path = "ledger.db"
[queue]
enabled = true
max_wait_ms = 5000
[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
max_concurrency = 1
[[backends.models]]
id = "gpt-4-turbo"
"""


def test_concurrent_decides_sharing_a_request_id_take_one_slot_each(start: Start, tmp_path: Path) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text(ONE_SLOT_TOML)
    server = start(config_path=path)
    request = dpb.DecideRequest(model="gpt-4-turbo", request_id="shared", estimated_input_tokens=1000)

    async def burst() -> list[dpb.DecideResponse]:
        async with grpc.aio.insecure_channel(server.target) as channel:
            decide = decision_pb2_grpc.DecisionServiceStub(channel).Decide
            await channel.channel_ready()
            async with asyncio.timeout(10):
                return list(await asyncio.gather(*(decide(request) for _ in range(5))))

    answers = asyncio.run(burst())
    kinds = sorted(str(a.WhichOneof("decision")) for a in answers)
    assert kinds == ["queue"] * 4 + ["route"], answers
    queued = [a.queue for a in answers if a.WhichOneof("decision") == "queue"]
    assert all(q.reason == "waiting_for:cloud:gpt-4-turbo" for q in queued), queued
    s = stubs(server.channel)
    assert s.backend("cloud").in_flight == 1
    assert math.isclose(s.global_budget().reserved_usd, TURBO_1K_USD)  # one reservation
    (route,) = [a.route for a in answers if a.WhichOneof("decision") == "route"]
    out = s.report(request_id="shared", backend_id="cloud", success=True)
    assert (out.recorded, out.decision_id) == (True, route.decision_id)
    assert s.backend("cloud").in_flight == 0
    again = s.report(request_id="shared", backend_id="cloud", success=True)
    assert again.recorded is False  # the queued ones were never decisions to settle
