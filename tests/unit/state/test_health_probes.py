"""Active health checks: paths, headers, the status machine with its thresholds, sticky admin
states, the latency EMA and discovered models. The HTTP side, against a real loopback server, is
in tests/integration/state/test_health_probes_http.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from support.probes import FAIL, HC, OK, H, K, U, registry, status

from nexus_grpc.domain.backend import probe_path
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.state.health import HealthProber, ProbeResult, parse_models, probe_headers
from nexus_grpc.state.registry import Registry
from nexus_grpc.testing.builders import backend, config, model
from nexus_grpc.testing.clock import FakeClock

# ---- paths and headers ---------------------------------------------------------------------


def test_probe_paths_by_type() -> None:
    assert probe_path(backend("o", type="ollama")) == "/api/tags"
    assert probe_path(backend("l", type="llamacpp")) == "/health"
    for kind in ("vllm", "exo", "lmstudio"):
        assert probe_path(backend("v", type=kind)) == "/v1/models"
    assert probe_path(backend("g", type="generic", zone="restricted")) == "/v1/models"
    assert probe_path(backend("o", type="ollama", health_path="/ready")) == "/ready"


def test_open_zone_backends_are_probed_only_with_a_health_path() -> None:
    for kind in ("openai", "anthropic", "google"):
        assert probe_path(backend("c", type=kind)) is None
        assert probe_path(backend("c", type=kind, health_path="/v1/models")) == "/v1/models"
    assert probe_path(backend("g", type="generic", zone="open")) is None


def test_probe_headers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PROBE_HEADERS", "Authorization: Bearer s3cret\n\n  X-Api-Key:abc:def  \nbroken line\n"
    )
    assert probe_headers("PROBE_HEADERS") == [("Authorization", "Bearer s3cret"), ("X-Api-Key", "abc:def")]
    assert probe_headers("") == []
    monkeypatch.delenv("PROBE_HEADERS")
    assert probe_headers("PROBE_HEADERS") == []


def test_malformed_header_lines_are_skipped_without_logging_values(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PROBE_HEADERS", "Bad Name: s3cret\nOk: 1")
    assert probe_headers("PROBE_HEADERS") == [("Ok", "1")]
    assert "line 1" in caplog.text
    assert "s3cret" not in caplog.text


def test_parse_models_shapes() -> None:
    ollama = {"models": [{"name": "llama3:70b"}, {"name": "qwen2:7b"}, {"name": ""}, {"x": 1}, "junk"]}
    assert parse_models(json.dumps(ollama).encode(), 256) == ("llama3:70b", "qwen2:7b")
    openai = {"object": "list", "data": [{"id": "b-model"}, {"id": "a-model"}, {"id": "a-model"}]}
    assert parse_models(json.dumps(openai).encode(), 256) == ("a-model", "b-model")
    assert parse_models(json.dumps({"models": []}).encode(), 256) == ()
    assert parse_models(json.dumps({"data": [{"id": "x" * 300}]}).encode(), 256) == ()
    for body in (b"OK", b"[]", b'{"status": "ok"}', b"\xff\xfe", b'{"models": 3}'):
        assert parse_models(body, 256) is None


# ---- the status machine --------------------------------------------------------------------


def apply_all(reg: Registry, prober: HealthProber, results: list[ProbeResult]) -> list[BackendStatus]:
    seen = []
    for result in results:
        found = reg.get("b")
        assert found is not None
        prober.apply("b", found[1], result, reg.config.health_check)
        seen.append(status(reg, "b"))
    return seen


def test_failure_and_recovery_thresholds() -> None:
    reg = registry(backend("b"), hc=replace(HC, failure_threshold=3, recovery_threshold=2))
    prober = HealthProber(reg)
    assert status(reg, "b") == K
    steps = [OK, FAIL, FAIL, OK, FAIL, FAIL, FAIL, OK, FAIL, OK, OK, FAIL]
    assert apply_all(reg, prober, steps) == [H, H, H, H, H, H, U, U, U, U, H, H]


def test_status_changes_notify_and_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    reg = registry(backend("b"), hc=replace(HC, failure_threshold=1, recovery_threshold=1))
    changes: list[int] = []
    prober = HealthProber(reg, on_change=lambda: changes.append(1))
    caplog.set_level("INFO", logger="nexus_grpc.health")
    apply_all(reg, prober, [OK, OK, FAIL, FAIL, OK])
    assert len(changes) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "backend b: UNKNOWN -> HEALTHY (HTTP 200)",
        "backend b: HEALTHY -> UNHEALTHY (HTTP 500)",
        "backend b: UNHEALTHY -> HEALTHY (HTTP 200)",
    ]


@pytest.mark.parametrize("sticky", [BackendStatus.DRAINING, BackendStatus.UNHEALTHY])
def test_an_admin_set_state_sticks(sticky: BackendStatus) -> None:
    reg = registry(backend("b"), hc=replace(HC, failure_threshold=1, recovery_threshold=1))
    prober = HealthProber(reg)
    apply_all(reg, prober, [OK])
    reg.set_state("b", sticky)  # admin
    assert apply_all(reg, prober, [OK, FAIL, OK, OK]) == [sticky] * 4
    reg.set_state("b", H)  # the admin clears it: probes decide again
    assert apply_all(reg, prober, [FAIL, OK]) == [U, H]


def test_loading_is_left_to_its_owner_until_the_probes_fail() -> None:
    reg = registry(backend("b"), hc=replace(HC, failure_threshold=2, recovery_threshold=1))
    prober = HealthProber(reg)
    reg.set_state("b", BackendStatus.LOADING, eta_ms=1000)
    L = BackendStatus.LOADING
    assert apply_all(reg, prober, [OK, FAIL, FAIL, OK]) == [L, L, U, H]


def test_latency_ema_from_probe_round_trips() -> None:
    reg = registry(backend("b"))
    prober = HealthProber(reg)
    apply_all(reg, prober, [replace(OK, latency_ms=10.0), replace(OK, latency_ms=60.0), FAIL])
    found = reg.get("b")
    assert found is not None
    assert found[1].latency_ema_ms == pytest.approx((60.0 + 4 * 10.0) / 5)


def test_discovered_models_follow_the_probe_and_reloads() -> None:
    reg = registry(backend("b", models=(model("m", context_length=100, vision=True),)), backend("c"))
    prober = HealthProber(reg)
    version = reg.version
    apply_all(reg, prober, [replace(OK, models=("m", "n"))])
    assert reg.version == version + 1
    assert sorted(reg.fleet.candidates) == ["m", "n"]
    found = reg.get("b")
    assert found is not None
    assert found[0].models[0] == model("m", context_length=100, vision=True)
    apply_all(reg, prober, [replace(OK, models=("n", "m")), OK, FAIL])  # same set, no models, failure
    assert reg.version == version + 1  # nothing rebuilt
    apply_all(reg, prober, [replace(OK, models=("o",))])
    assert sorted(reg.fleet.candidates) == ["m", "o"]
    assert [c.id for c in reg.fleet.candidates["m"]] == ["b", "c"]
    # a reload keeps the list of a backend that remains; a removed one forgets it
    reg.load(reg.config)
    assert "o" in reg.fleet.candidates
    reg.load(replace(reg.config, backends=tuple(b for b in reg.config.backends if b.id == "c")))
    assert reg.discovered("b") == ()
    assert not reg.set_discovered("b", ["x"])
    assert reg.set_discovered("c", ["x"]) and reg.set_discovered("c", [])
    assert sorted(reg.fleet.candidates) == ["m"]


def test_initial_status_only_probed_backends_are_unknown() -> None:
    reg = registry(backend("local"), backend("cloud", type="openai"))
    assert (status(reg, "local"), status(reg, "cloud")) == (K, H)
    off = Registry(config([backend("local")]), FakeClock())
    assert status(off, "local") == H


# ---- rounds --------------------------------------------------------------------------------


def test_disabled_prober_sets_first_round_at_once() -> None:
    async def body() -> None:
        reg = Registry(config([backend("a")]), FakeClock())
        prober = HealthProber(reg)
        task = asyncio.create_task(prober.run())
        try:
            await asyncio.wait_for(prober.first_round.wait(), 5)
            assert prober.rounds == 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(body())
