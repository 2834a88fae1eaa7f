"""The contract every stage keeps — only narrow, one exclusion per dropped candidate in its own name,
never add — checked by the executor (NEXUS_VERIFY=1) on every stage, over random fleets and
requests, and shown to catch stages that break it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_grpc.domain.enums import BackendStatus, PrivacyZone
from nexus_grpc.pipeline import intent as intent_module
from nexus_grpc.pipeline.executor import ContractError, Pipeline
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Snapshot
from nexus_grpc.reconcilers import default_stages
from nexus_grpc.testing.builders import backend, budget_config, config, engine, policy, request


@pytest.fixture(autouse=True)
def verify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intent_module, "VERIFY", True)


@given(
    zones=st.lists(st.sampled_from(["ollama", "openai"]), min_size=1, max_size=8),
    tiers=st.lists(st.integers(1, 5), min_size=8, max_size=8),
    statuses=st.lists(st.sampled_from(list(BackendStatus)[1:]), min_size=8, max_size=8),
    restricted=st.booleans(),
    min_tier=st.integers(0, 5),
    vision=st.booleans(),
    tokens=st.integers(0, 50_000),
)
@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_stage_keeps_the_contract(
    zones: list[str],
    tiers: list[int],
    statuses: list[BackendStatus],
    restricted: bool,
    min_tier: int,
    vision: bool,
    tokens: int,
) -> None:
    fleet = [backend(f"b{i}", type=kind, tier=tiers[i], models=("m",)) for i, kind in enumerate(zones)]
    cfg = config(
        fleet,
        policies=[policy("m", privacy="unrestricted", min_tier=2)],
        budget=budget_config(0.01, action="block_cloud"),
    )
    eng = engine(cfg, indexed=False)
    for i, status in enumerate(statuses[: len(fleet)]):
        eng.registry.set_state(f"b{i}", status, eta_ms=100)
    privacy = PrivacyZone.RESTRICTED if restricted else PrivacyZone.UNSPECIFIED
    eng.explain(
        request("m", privacy=privacy, min_tier=min_tier, needs_vision=vision, estimated_input_tokens=tokens)
    )


class Adder:
    name = "Adder"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        intent.candidates = [*intent.candidates, *snap.fleet.candidates["x"]]
        intent.static = None


class SilentDropper:
    name = "SilentDropper"
    fail_open = False

    def reconcile(self, intent: Intent, snap: Snapshot) -> None:
        intent.narrow(list(intent.candidates)[1:])


@pytest.mark.parametrize(("stage", "words"), [(Adder(), "added a candidate"), (SilentDropper(), "dropped")])
def test_the_check_catches_a_stage_that_breaks_it(stage: object, words: str) -> None:
    eng = engine(config([backend("a"), backend("b"), backend("c", models=("x",))]), indexed=False)
    stages = [default_stages()[0], stage]
    with pytest.raises(ContractError, match=words):
        Pipeline(stages).decide(request("m"), eng.snapshot())  # type: ignore[list-item]
