"""RegistryService, BudgetService and AdminService over a real server."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from nexus_grpc import __version__
from nexus_grpc._gen.nexus.v1 import admin_pb2 as apb
from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.testing.clock import FakeClock
from nexus_grpc.testing.server import TestServer

StubsOf = Callable[[TestServer], Any]
ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]
StartServer = Callable[..., TestServer]


def ids(s: Any) -> list[str]:
    return [b.id for b in s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends]


def get(s: Any, backend_id: str) -> tpb.Backend:
    backend: tpb.Backend = s.registry.GetBackend(
        rpb.GetBackendRequest(backend_id=backend_id), timeout=5
    ).backend
    return backend


def set_state(s: Any, backend_id: str, status: int, **kw: Any) -> tpb.Backend:
    req = rpb.SetBackendStateRequest(backend_id=backend_id, status=status, **kw)  # type: ignore[arg-type]
    backend: tpb.Backend = s.registry.SetBackendState(req, timeout=5).backend
    return backend


# -- RegistryService --------------------------------------------------------------------------


def test_list_and_get_show_configuration_and_live_state(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    assert ids(s) == ["local", "cloud", "p1", "p2"]
    local = get(s, "local")
    assert (local.url, local.type, local.zone) == (
        "http://127.0.0.1:9001",
        "ollama",
        tpb.PRIVACY_ZONE_RESTRICTED,
    )
    assert (local.tier, local.priority, local.max_concurrency) == (2, 1, 1)
    assert local.status == tpb.BACKEND_STATUS_HEALTHY
    assert [m.id for m in local.models] == ["m", "secret-model"]
    assert local.models[0].HasField("context_length") and local.models[0].context_length == 4096
    assert not local.models[1].HasField("context_length")  # absent = unlimited
    assert not local.HasField("pricing")
    cloud = get(s, "cloud")
    assert (cloud.zone, cloud.tier, cloud.priority) == (tpb.PRIVACY_ZONE_OPEN, 5, 60)
    assert get(s, "p1").priority == 50  # the default


def test_upsert_keeps_place_new_goes_last_absent_fields_default(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    replaced = s.registry.UpsertBackend(
        rpb.UpsertBackendRequest(
            backend=tpb.Backend(
                id="cloud",
                url="https://api.openai.com/v2",
                type="openai",
                priority=10,
                pricing=tpb.Pricing(input_per_1k=0.002, output_per_1k=0.004),
                models=[tpb.Model(id="gpt-4-turbo", context_length=1000, tools=True)],
            )
        ),
        timeout=5,
    ).backend
    assert ids(s) == ["local", "cloud", "p1", "p2"]
    assert replaced.url == "https://api.openai.com/v2"
    assert replaced.priority == 10
    assert replaced.tier == 1  # absent: the config default, not the old value 5
    assert replaced.zone == tpb.PRIVACY_ZONE_OPEN  # by type
    assert math.isclose(replaced.pricing.input_per_1k, 0.002)
    assert [m.id for m in replaced.models] == ["gpt-4-turbo"]

    new = s.registry.UpsertBackend(
        rpb.UpsertBackendRequest(
            backend=tpb.Backend(
                id="gpu-9", url="http://127.0.0.1:9300", type="vllm", models=[tpb.Model(id="m")]
            )
        ),
        timeout=5,
    ).backend
    assert ids(s) == ["local", "cloud", "p1", "p2", "gpu-9"]
    assert (new.tier, new.priority, new.max_concurrency) == (1, 50, 0)
    assert new.zone == tpb.PRIVACY_ZONE_RESTRICTED
    assert new.status == tpb.BACKEND_STATUS_HEALTHY
    assert not new.models[0].HasField("context_length")
    assert (new.models[0].vision, new.models[0].tools, new.models[0].json_mode) == (False, False, False)

    # the registry change is live: the new price, and the new backend as an alternate
    dec = s.decision.Decide(dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=100), timeout=5)
    assert dec.route.backend_id == "cloud"
    assert math.isclose(dec.cost_estimate.cost_usd, 100 * 0.002 / 1000 + 50 * 0.004 / 1000)
    too_long = s.decision.Decide(
        dpb.DecideRequest(model="gpt-4-turbo", estimated_input_tokens=1000), timeout=5
    )
    assert [e.code for e in too_long.exclusions] == [tpb.EXCLUSION_CODE_CONTEXT_TOO_LONG]
    m = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert m.route.backend_id == "local"
    assert list(m.route.alternates) == ["gpu-9"]


def test_remove_backend(small: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(small)
    s.registry.RemoveBackend(rpb.RemoveBackendRequest(backend_id="p2"), timeout=5)
    assert ids(s) == ["local", "cloud", "p1"]
    code, _ = error_of(s.registry.GetBackend, rpb.GetBackendRequest(backend_id="p2"))
    assert code == grpc.StatusCode.NOT_FOUND
    resp = s.decision.Decide(dpb.DecideRequest(model="backup"), timeout=5)
    assert resp.reject.code == tpb.REJECT_CODE_MODEL_NOT_FOUND
    code, _ = error_of(s.registry.RemoveBackend, rpb.RemoveBackendRequest(backend_id="p2"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_loading_eta_counts_down_and_stays_zero(
    start_server: Callable[..., TestServer], small_toml: str, stubs_of: StubsOf
) -> None:
    clock = FakeClock()
    s = stubs_of(start_server(config_text=small_toml, clock=clock))
    set_resp = set_state(
        s, "local", tpb.BACKEND_STATUS_LOADING, loading_eta_ms=600, loading_progress_percent=40
    )
    assert set_resp.status == tpb.BACKEND_STATUS_LOADING
    assert set_resp.loading_eta_ms == 600
    assert set_resp.loading_progress_percent == 40
    clock.advance(0.25)
    assert get(s, "local").loading_eta_ms == 350  # counts down from when it was set
    clock.advance(0.65)
    done = get(s, "local")
    assert done.loading_eta_ms == 0
    assert done.status == tpb.BACKEND_STATUS_LOADING  # until an admin or a probe changes it
    # ETA run out: the queue wait is max_wait_ms
    q = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
    assert q.queue.estimated_wait_ms == 5000, q
    clock.advance(10.0)
    assert get(s, "local").loading_eta_ms == 0


def test_draining_and_unhealthy_states_exclude(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    for status, code in [
        (tpb.BACKEND_STATUS_DRAINING, tpb.EXCLUSION_CODE_DRAINING),
        (tpb.BACKEND_STATUS_UNHEALTHY, tpb.EXCLUSION_CODE_UNHEALTHY),
        (tpb.BACKEND_STATUS_UNKNOWN, tpb.EXCLUSION_CODE_UNHEALTHY),
    ]:
        assert set_state(s, "local", status, reason="maintenance").status == status
        resp = s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5)
        assert resp.reject.code == tpb.REJECT_CODE_NO_ELIGIBLE_BACKEND
        assert [e.code for e in resp.reject.reasons] == [code]
    set_state(s, "local", tpb.BACKEND_STATUS_HEALTHY)
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).route.backend_id == "local"


# -- BudgetService ----------------------------------------------------------------------------


def test_get_budget_months_and_scopes(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    now = s.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget
    assert now.scope == "global"
    assert now.month == datetime.now(UTC).strftime("%Y-%m")
    assert (now.limit_usd, now.remaining_usd, now.status) == (100, 100, tpb.BUDGET_STATUS_NORMAL)

    s.decision.ReportOutcome(
        dpb.ReportOutcomeRequest(request_id="spend-1", backend_id="cloud", success=True, cost_usd=80.0),
        timeout=5,
    )
    now = s.budget.GetBudget(bpb.GetBudgetRequest(month=now.month), timeout=5).budget
    assert (now.spent_usd, now.reserved_usd) == (80, 0)
    assert math.isclose(now.utilization_percent, 80)
    assert math.isclose(now.remaining_usd, 20)
    assert now.status == tpb.BUDGET_STATUS_SOFT_LIMIT

    old = s.budget.GetBudget(bpb.GetBudgetRequest(month="2024-01"), timeout=5).budget
    assert old.month == "2024-01"
    assert (old.spent_usd, old.reserved_usd, old.limit_usd) == (0, 0, 100)

    team = s.budget.GetBudget(bpb.GetBudgetRequest(tenant="team-a"), timeout=5).budget
    assert (team.scope, team.limit_usd, team.spent_usd) == ("team-a", 20, 0)
    stranger = s.budget.GetBudget(bpb.GetBudgetRequest(tenant="nobody"), timeout=5).budget
    assert (stranger.scope, stranger.limit_usd, stranger.utilization_percent) == ("nobody", 0, 0)


# -- AdminService -----------------------------------------------------------------------------


def test_server_info(small: TestServer, stubs_of: StubsOf) -> None:
    s = stubs_of(small)
    info = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5)
    assert info.version == __version__
    assert info.config_version == small.runtime.config.version
    assert re.fullmatch(r"[0-9a-f]{6,64}", info.config_version)
    loaded = datetime.fromisoformat(info.config_loaded_at)
    assert loaded.tzinfo is not None
    assert abs((datetime.now(UTC) - loaded).total_seconds()) < 60
    assert info.ledger_kind == "memory"
    assert info.ledger_available
    assert list(info.degraded_reasons) == []
    assert not info.draining


def test_reload_on_the_demo_fleet_is_refused(demo: TestServer, stubs_of: StubsOf, error_of: ErrorOf) -> None:
    s = stubs_of(demo)
    code, details = error_of(s.admin.ReloadConfig, apb.ReloadConfigRequest())
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    assert details


def test_reload_config_valid_then_invalid(
    start_server: StartServer,
    stubs_of: StubsOf,
    write_config: Callable[..., Path],
    small_toml: str,
) -> None:
    path = write_config(small_toml)
    server = start_server(config_path=path)
    s = stubs_of(server)
    first = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5).config_version
    # live state survives a reload; upserted backends are dropped
    set_state(s, "local", tpb.BACKEND_STATUS_DRAINING)
    s.registry.UpsertBackend(
        rpb.UpsertBackendRequest(
            backend=tpb.Backend(
                id="temp", url="http://127.0.0.1:9400", type="ollama", models=[tpb.Model(id="m")]
            )
        ),
        timeout=5,
    )

    extra = (
        '\n[[backends]]\nid = "p3"\nurl = "http://127.0.0.1:9004"\ntype = "vllm"\n'
        '[[backends.models]]\nid = "x"\n'
    )
    path.write_text(small_toml + extra, encoding="utf-8")
    reloaded = s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=10).config_version
    assert reloaded and reloaded != first
    info = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5)
    assert info.config_version == reloaded
    assert ids(s) == ["local", "cloud", "p1", "p2", "p3"]
    assert get(s, "local").status == tpb.BACKEND_STATUS_DRAINING
    assert s.decision.Decide(dpb.DecideRequest(model="x"), timeout=5).route.backend_id == "p3"

    bad = small_toml.replace('strategy = "smart"', 'strategy = "fastest"').replace("tier = 2", "tier = 7")
    path.write_text(bad, encoding="utf-8")
    with_errors: Any
    try:
        s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=10)
        raise AssertionError("an invalid config was accepted")
    except grpc.RpcError as exc:
        with_errors = exc
    assert with_errors.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    details = with_errors.details()
    assert "routing.strategy" in details
    assert "backends[0].tier" in details
    assert path.name in details  # each error names the file
    assert "Traceback" not in details
    # the old config is kept and still serves
    info = s.admin.GetServerInfo(apb.GetServerInfoRequest(), timeout=5)
    assert info.config_version == reloaded
    assert info.degraded_reasons  # a failed reload is reported
    assert ids(s) == ["local", "cloud", "p1", "p2", "p3"]
    assert s.decision.Decide(dpb.DecideRequest(model="x"), timeout=5).route.backend_id == "p3"


def test_reload_applies_limits_live(
    start_server: StartServer,
    stubs_of: StubsOf,
    error_of: ErrorOf,
    write_config: Callable[..., Path],
    small_toml: str,
) -> None:
    path = write_config(small_toml)
    s = stubs_of(start_server(config_path=path))
    long_name = "model-name-of-24-bytes.."
    resp = s.decision.Decide(dpb.DecideRequest(model=long_name), timeout=5)
    assert resp.reject.code == tpb.REJECT_CODE_MODEL_NOT_FOUND
    path.write_text(small_toml + "\n[limits]\nmax_model_len = 16\n", encoding="utf-8")
    s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=10)
    code, details = error_of(s.decision.Decide, dpb.DecideRequest(model=long_name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "model" in details


def test_reload_does_not_apply_server_section_changes(
    start_server: StartServer,
    stubs_of: StubsOf,
    write_config: Callable[..., Path],
    small_toml: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A change to [server] is reported as needing a restart while the rest applies, so
    the running process keeps its admin/client token settings until it is restarted."""
    path = write_config(small_toml)
    server = start_server(config_path=path)
    s = stubs_of(server)
    first = server.runtime.config.version
    monkeypatch.setenv("NEXUS_TEST_ADMIN", "new-admin")
    monkeypatch.setenv("NEXUS_TEST_CLIENT", "new-client")
    changed = small_toml.replace(
        "[server]\n",
        '[server]\nadmin_token_env = "NEXUS_TEST_ADMIN"\nclient_token_env = "NEXUS_TEST_CLIENT"\n',
        1,
    )
    path.write_text(changed, encoding="utf-8")
    assert s.admin.ReloadConfig(apb.ReloadConfigRequest(), timeout=10).config_version
    # the file was taken (its version is the running one) ...
    assert server.runtime.config.version != first
    # ... but the running server's security settings did not change without a restart
    assert s.decision.Decide(dpb.DecideRequest(model="m"), timeout=5).WhichOneof("decision") == "route"
    set_state(s, "p1", tpb.BACKEND_STATUS_DRAINING)
