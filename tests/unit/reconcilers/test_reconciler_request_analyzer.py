"""RequestAnalyzer: alias resolution (up to 3 hops), candidates in config order, unknown models."""

from __future__ import annotations

import pytest

from nexus_grpc.domain.decision import Reject
from nexus_grpc.domain.enums import RejectCode
from nexus_grpc.pipeline.intent import Intent
from nexus_grpc.reconcilers import RequestAnalyzer
from nexus_grpc.testing.builders import backend, config, engine, request

ALIASES = {"a3": "a2", "a2": "a1", "a1": "real"}


@pytest.mark.parametrize(
    ("requested", "chain"),
    [
        ("real", "real"),
        ("a1", "a1 -> real"),
        ("a2", "a2 -> a1 -> real"),
        ("a3", "a3 -> a2 -> a1 -> real"),  # 3 hops: the longest chain a config may hold
    ],
)
def test_alias_chains_resolve(requested: str, chain: str) -> None:
    eng = engine(config([backend("gpu", models=("real",))], aliases=ALIASES))
    decision = eng.explain(request(requested))
    assert (decision.requested_model, decision.resolved_model) == (requested, "real")
    assert decision.route is not None
    assert decision.route.model == "real"
    [stage] = [s for s in decision.stages if s.reconciler == "RequestAnalyzer"]
    assert stage.notes.get("alias_chain", "real") == chain
    assert stage.candidates_out == 1


def test_candidates_are_every_backend_serving_the_resolved_model_in_config_order() -> None:
    cfg = config(
        [
            backend("c", models=("x", "real")),
            backend("other", models=("x",)),
            backend("a", models=("real",)),
            backend("b", models=("real", "y")),
        ],
        aliases={"nick": "real"},
    )
    eng = engine(cfg)
    intent = Intent(request("nick"), "nick")
    RequestAnalyzer().reconcile(intent, eng.snapshot())
    assert intent.chain == ("nick", "real")
    assert intent.model == "real"
    assert [c.id for c in intent.candidates] == ["c", "a", "b"]
    assert [c.id for c in intent.model_candidates] == ["c", "a", "b"]


def test_unknown_model_is_model_not_found_naming_the_available_models() -> None:
    cfg = config(
        [
            backend("gpu", models=("llama3:8b", "llama3:70b")),
            backend("cloud", type="openai", models=("gpt-4-turbo",)),
        ]
    )
    decision = engine(cfg).explain(request("claude-3-opus", estimated_input_tokens=5000))
    verdict = decision.verdict
    assert isinstance(verdict, Reject)
    assert verdict.code == RejectCode.MODEL_NOT_FOUND
    assert verdict.retry_after_ms == 0
    assert verdict.message == (
        "Request rejected: no backend serves model 'claude-3-opus'; "
        "available models: gpt-4-turbo, llama3:70b, llama3:8b"
    )
    assert decision.exclusions == ()
    assert (decision.cost_estimate.input_tokens, decision.cost_estimate.output_tokens) == (5000, 2500)
    assert decision.cost_estimate.cost_nano == 0
    [stage] = [s for s in decision.stages if s.reconciler == "RequestAnalyzer"]
    assert stage.notes["model_found"] == "false"


def test_alias_to_an_unserved_model_names_the_resolved_model() -> None:
    cfg = config([backend("gpu", models=("m",))], aliases={"nick": "gone"})
    verdict = engine(cfg).explain(request("nick")).verdict
    assert isinstance(verdict, Reject)
    assert verdict.code == RejectCode.MODEL_NOT_FOUND
    assert "model 'nick' (resolved to 'gone')" in verdict.message
    assert verdict.message.endswith("available models: m")


def test_reject_cost_estimate_is_the_largest_among_the_primarys_candidates() -> None:
    cfg = config(
        [
            backend("cheap", type="openai", models=("gpt-4-turbo",), pricing=(0.001, 0.001)),
            backend("dear", type="openai", models=("gpt-4-turbo",)),
            backend("free", type="ollama", models=("gpt-4-turbo",)),
        ]
    )
    decision = engine(cfg).explain(request("gpt-4-turbo", estimated_input_tokens=1000, needs_vision=True))
    assert isinstance(decision.verdict, Reject)
    assert decision.cost_estimate.cost_nano == 25_000_000
