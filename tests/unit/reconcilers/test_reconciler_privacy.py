"""PrivacyReconciler: restricted policies and requests keep only restricted backends. A stage that
raises (privacy fails closed): test_pipeline_failure_modes."""

from __future__ import annotations

import pytest

from nexus_grpc.config.schema import Policy
from nexus_grpc.domain.backend import BackendConfig, ModelSpec
from nexus_grpc.domain.decision import Decision, Reject
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode, PrivacyZone, RejectCode
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.domain.money import Price
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.pipeline.snapshot import Candidate, Snapshot
from nexus_grpc.reconcilers import (
    PrivacyReconciler,
    RequestAnalyzer,
)
from nexus_grpc.testing.builders import backend, config, engine, policy, request

PRIVACY = "PrivacyReconciler"


def fleet_of_mixed_zones() -> list[BackendConfig]:
    return [
        backend("local-1", type="ollama", models=("gpt-4", "llama3:70b", "m")),
        backend("cloud-1", type="openai", models=("gpt-4", "llama3:70b", "m")),
        backend("local-2", type="vllm", models=("gpt-4", "llama3:70b", "m")),
        backend("cloud-2", type="generic", zone="open", models=("gpt-4", "llama3:70b", "m")),
    ]


def survivors(decision: Decision) -> set[str]:
    """Backends that passed privacy: the routed one plus its alternates (all 4 fit in 3+1)."""
    route = decision.route
    assert route is not None, decision.verdict
    return {route.backend_id, *route.alternates}


def privacy_excluded(decision: Decision) -> dict[str, str]:
    return {e.backend_id: e.reason for e in decision.exclusions if e.reconciler == PRIVACY}


@pytest.mark.parametrize(
    ("policies", "model", "request_privacy", "expected_survivors"),
    [
        # restricted policy excludes open, keeps restricted
        ([policy("gpt-4*", privacy="restricted")], "gpt-4", PrivacyZone.UNSPECIFIED, {"local-1", "local-2"}),
        # a policy that does not match the model leaves every backend
        (
            [policy("gpt-4*", privacy="restricted")],
            "m",
            PrivacyZone.UNSPECIFIED,
            {"local-1", "cloud-1", "local-2", "cloud-2"},
        ),
        # no policy at all: zero-config means no restriction
        ([], "gpt-4", PrivacyZone.UNSPECIFIED, {"local-1", "cloud-1", "local-2", "cloud-2"}),
        # an explicitly unrestricted policy allows all
        (
            [policy("gpt-4*", privacy="unrestricted")],
            "gpt-4",
            PrivacyZone.UNSPECIFIED,
            {"local-1", "cloud-1", "local-2", "cloud-2"},
        ),
        # the request can tighten: RESTRICTED on an unrestricted model excludes open backends
        ([], "m", PrivacyZone.RESTRICTED, {"local-1", "local-2"}),
        (
            [policy("m", privacy="unrestricted")],
            "m",
            PrivacyZone.RESTRICTED,
            {"local-1", "local-2"},
        ),
        # ... but never relax: OPEN does not undo a restricted policy
        ([policy("gpt-4*", privacy="restricted")], "gpt-4", PrivacyZone.OPEN, {"local-1", "local-2"}),
        # unrestricted + restricted matching the same model: restricted wins
        (
            [policy("gpt-*", privacy="unrestricted"), policy("gpt-4", privacy="restricted")],
            "gpt-4",
            PrivacyZone.UNSPECIFIED,
            {"local-1", "local-2"},
        ),
    ],
)
def test_privacy_constraint_table(
    policies: list[Policy],
    model: str,
    request_privacy: PrivacyZone,
    expected_survivors: set[str],
) -> None:
    eng = engine(config(fleet_of_mixed_zones(), policies=policies))
    decision = eng.explain(request(model, privacy=request_privacy))
    assert survivors(decision) == expected_survivors
    excluded = privacy_excluded(decision)
    assert set(excluded) == {"local-1", "cloud-1", "local-2", "cloud-2"} - expected_survivors
    for e in decision.exclusions:
        if e.reconciler == PRIVACY:
            assert e.code == ExclusionCode.PRIVACY_ZONE
            assert e.suggested_action


def test_privacy_note_records_the_constraint() -> None:
    eng = engine(config(fleet_of_mixed_zones(), policies=[policy("gpt-4*", privacy="restricted")]))
    restricted = eng.explain(request("gpt-4"))
    open_ = eng.explain(request("m"))
    [r_stage] = [s for s in restricted.stages if s.reconciler == PRIVACY]
    [o_stage] = [s for s in open_.stages if s.reconciler == PRIVACY]
    assert r_stage.notes["privacy_constraint"] == "restricted"
    assert (r_stage.candidates_in, r_stage.candidates_out) == (4, 2)
    assert o_stage.notes["privacy_constraint"] == "unrestricted"
    assert (o_stage.candidates_in, o_stage.candidates_out) == (4, 4)


def test_reason_names_both_zones_and_the_model() -> None:
    eng = engine(config(fleet_of_mixed_zones(), policies=[policy("gpt-4*", privacy="restricted")]))
    reason = privacy_excluded(eng.explain(request("gpt-4")))["cloud-1"]
    assert reason == "backend zone open violates restricted policy for model 'gpt-4'"


@pytest.mark.parametrize(
    ("pattern", "model", "restricted"),
    [
        ("{gpt-4,claude-3}*", "gpt-4-turbo", True),
        ("{gpt-4,claude-3}*", "claude-3-opus", True),
        ("{gpt-4,claude-3}*", "gemini-pro", False),
        ("{gpt-4,claude-3}*", "my-gpt-4", False),  # full match, not a search
        ("llama3:*", "llama3:70b", True),
        ("llama?:70b", "llama3:70b", True),
        ("llama[!3]:70b", "llama3:70b", False),
        ("*", "anything/at:all", True),
    ],
)
def test_policy_glob_patterns(pattern: str, model: str, restricted: bool) -> None:
    cfg = config(
        [backend("local", models=(model,)), backend("cloud", type="openai", models=(model,))],
        policies=[policy(pattern, privacy="restricted")],
    )
    decision = engine(cfg).explain(request(model))
    route = decision.route
    assert route is not None
    if restricted:
        assert route.backend_id == "local"
        assert set(privacy_excluded(decision)) == {"cloud"}
    else:
        assert privacy_excluded(decision) == {}
        assert (route.backend_id, route.alternates) == ("local", ("cloud",))


def test_all_excluded_rejects_with_every_reason() -> None:
    cfg = config(
        [
            backend("cloud-a", type="openai", models=("gpt-4",)),
            backend("cloud-b", type="anthropic", models=("gpt-4",)),
            backend("cloud-c", type="google", models=("gpt-4",)),
        ],
        policies=[policy("gpt-4*", privacy="restricted")],
    )
    decision = engine(cfg).explain(request("gpt-4"))
    assert isinstance(decision.verdict, Reject)
    assert decision.verdict.code == RejectCode.NO_ELIGIBLE_BACKEND
    assert decision.verdict.retry_after_ms == 0
    assert decision.verdict.message == "Request rejected: 3 backends excluded by PrivacyReconciler"
    assert [(e.backend_id, e.code, e.model) for e in decision.exclusions] == [
        ("cloud-a", ExclusionCode.PRIVACY_ZONE, "gpt-4"),
        ("cloud-b", ExclusionCode.PRIVACY_ZONE, "gpt-4"),
        ("cloud-c", ExclusionCode.PRIVACY_ZONE, "gpt-4"),
    ]
    for e in decision.exclusions:
        assert "open" in e.reason and "restricted" in e.reason and "'gpt-4'" in e.reason


@pytest.mark.parametrize(
    ("policy_pattern", "requested"),
    [
        ("gpt-4*", "gpt-4"),  # matches the requested name only
        ("mid", "gpt-4"),  # matches the intermediate name only
        ("llama3:*", "gpt-4"),  # matches the resolved name only
    ],
)
def test_policy_matched_on_every_name_of_the_alias_chain(policy_pattern: str, requested: str) -> None:
    cfg = config(
        [
            backend("gpu-1", type="ollama", models=("llama3:70b",)),
            backend("cloud", type="openai", models=("llama3:70b",)),
        ],
        aliases={"gpt-4": "mid", "mid": "llama3:70b"},
        policies=[policy(policy_pattern, privacy="restricted")],
    )
    decision = engine(cfg).explain(request(requested))
    assert decision.resolved_model == "llama3:70b"
    route = decision.route
    assert route is not None
    assert route.backend_id == "gpu-1"
    assert route.alternates == ()
    assert route.model == "llama3:70b"
    assert set(privacy_excluded(decision)) == {"cloud"}


def _snapshot_and_intent(model: str) -> tuple[Snapshot, Intent]:
    cfg = config(
        [backend("local", models=(model,)), backend("cloud", type="openai", models=(model,))],
        policies=[policy("*", privacy="restricted")],
    )
    eng = engine(cfg)
    snap = eng.snapshot()
    intent = Intent(request(model), model)
    RequestAnalyzer().reconcile(intent, snap)
    return snap, intent


def _ghost(model: str) -> Candidate:
    """A candidate whose backend id is not in the snapshot's registry (its own config says ollama)."""
    ghost = backend("ghost", type="ollama", models=(model,))
    return Candidate(ghost, ModelSpec(model), Price(0, 0), LiveBackend(BackendStatus.HEALTHY, 60.0), 9)


def test_unregistered_candidate_is_treated_as_open() -> None:
    snap, intent = _snapshot_and_intent("m")
    intent.candidates = [*intent.candidates, _ghost("m")]
    intent.static = None  # a hand-made candidate list, not a memoized static set
    PrivacyReconciler().reconcile(intent, snap)
    assert [c.id for c in intent.candidates] == ["local"]
    assert {(e.backend_id, e.code) for e in intent.exclusions} == {
        ("cloud", ExclusionCode.PRIVACY_ZONE),
        ("ghost", ExclusionCode.PRIVACY_ZONE),
    }
    [ghost_reason] = [e.reason for e in intent.exclusions if e.backend_id == "ghost"]
    assert ghost_reason.startswith("backend zone open violates restricted")
