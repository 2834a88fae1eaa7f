"""Decision → Envoy header mutations and immediate responses: the one status/JSON table."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from nexus_grpc import text
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.domain.decision import Decision, Queue, Reject, Route
from nexus_grpc.domain.enums import BackendStatus, ExclusionCode
from nexus_grpc.domain.request import DecisionRequest
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.engine import DecisionEngine
from nexus_grpc.errors import LedgerError, Overloaded
from nexus_grpc.ledger.base import month_of
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.pipeline.executor import Pipeline
from nexus_grpc.reconcilers import default_stages
from nexus_grpc.servicers.envoy.mapping import HeaderError
from nexus_grpc.servicers.envoy.responses import (
    available_backends,
    bad_request_reply,
    destination_endpoint,
    error_reply,
    queue_reply,
    reject_reply,
    retry_after,
    route_headers,
)
from nexus_grpc.state.registry import Registry

FLEET = """
[ledger]
kind = "memory"
[envoy]
expose_reasons = "{expose}"
[routing.fallbacks]
"llama3:70b" = ["qwen2:72b"]
[[routing.policies]]
model_pattern = "gpt-4*"
privacy = "restricted"
[routing.budget]
monthly_limit_usd = 100.0
hard_limit_action = "block_cloud"
[[backends]]
id = "gpu-1"
url = "http://10.0.0.5:11434"
type = "ollama"
tier = 3
[[backends.models]]
id = "llama3:70b"
[[backends]]
id = "gpu-2"
url = "http://[fd00::7]/v1"
type = "vllm"
[[backends.models]]
id = "qwen2:72b"
[[backends.models]]
id = "llama3:70b"
[[backends]]
id = "openai"
url = "https://api.openai.com"
type = "openai"
[[backends.models]]
id = "gpt-4-turbo"
[[backends.models]]
id = "gpt-3.5-turbo"
"""


def make_engine(expose: str = "full") -> DecisionEngine:
    config = load_config_text(FLEET.format(expose=expose))
    return DecisionEngine(Registry(config, time.monotonic), Pipeline(default_stages()), MemoryLedger())


def decide(engine: DecisionEngine, model: str, **kw: object) -> Decision:
    request = DecisionRequest(request_id="rid-9", model=model, **kw)  # type: ignore[arg-type]
    return asyncio.run(engine.decide(request, take_slot=False))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://10.0.0.5:11434", "10.0.0.5:11434"),
        ("http://10.0.0.5", "10.0.0.5:80"),
        ("https://10.0.0.5/v1", "10.0.0.5:443"),
        ("http://[fd00::7]:8000/v1", "[fd00::7]:8000"),
        ("https://api.openai.com", None),
        ("http://localhost:8000", None),
        ("not a url", None),
    ],
)
def test_destination_endpoint_only_for_ip_literals(url: str, expected: str | None) -> None:
    assert destination_endpoint(url) == expected


@pytest.mark.parametrize(("ms", "text"), [(1, "1"), (999, "1"), (1000, "1"), (1001, "2"), (30000, "30")])
def test_retry_after_rounds_up_to_whole_seconds(ms: int, text: str) -> None:
    assert retry_after(ms) == text


def test_route_headers() -> None:
    engine = make_engine()
    decision = decide(engine, "llama3:70b")
    assert isinstance(decision.verdict, Route)
    headers, remove = route_headers(decision, decision.verdict)
    values = dict(headers)
    assert values["x-nexus-backend"] == decision.verdict.backend_id
    assert values["x-nexus-request-id"] == "rid-9"
    assert values["x-nexus-model"] == "llama3:70b"
    assert "x-nexus-budget-status" in remove  # normal: client copies are removed, none set

    cloud = decide(engine, "gpt-3.5-turbo")
    assert isinstance(cloud.verdict, Route)
    headers, remove = route_headers(cloud, cloud.verdict)
    assert "x-gateway-destination-endpoint" not in dict(headers)
    assert "x-gateway-destination-endpoint" in remove


def test_route_budget_headers_when_not_normal() -> None:
    engine = make_engine()
    ledger = engine.ledger
    assert isinstance(ledger, MemoryLedger)
    ledger.seed_spend(GLOBAL, month_of(time.time()), 87_654_321_000)  # 87.654321 of 100 USD
    decision = decide(engine, "llama3:70b")
    assert isinstance(decision.verdict, Route)
    values = dict(route_headers(decision, decision.verdict)[0])
    assert values["x-nexus-budget-status"] == "soft_limit"
    assert values["x-nexus-budget-utilization"] == "87.65"
    assert values["x-nexus-budget-remaining"] == "12.345679"


def _reply(engine: DecisionEngine, decision: Decision) -> tuple[int, dict[str, str], dict[str, object]]:
    assert isinstance(decision.verdict, Reject)
    reply = reject_reply(engine, decision, decision.verdict)
    return reply.status, dict(reply.headers), json.loads(reply.body)


def test_reject_table() -> None:
    engine = make_engine()
    status, headers, body = _reply(engine, decide(engine, "nope"))
    assert (status, body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (  # type: ignore[index]
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    )
    assert "retry-after" not in headers
    # the summary says what happened, not "0 backends excluded by no stage"
    assert headers["x-nexus-rejection-reasons"] == (
        "model 'nope' is not served here; available models: gpt-3.5-turbo, gpt-4-turbo, llama3:70b, qwen2:72b"
    )
    assert body["context"]["available_models"] == ["gpt-3.5-turbo", "gpt-4-turbo", "llama3:70b", "qwen2:72b"]  # type: ignore[index]
    assert body["context"]["available_backends"] == []  # type: ignore[index]

    status, headers, body = _reply(engine, decide(engine, "gpt-4-turbo"))
    assert (status, body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (  # type: ignore[index]
        503,
        "service_unavailable",
        None,
        "no_eligible_backend",
    )
    assert headers["x-nexus-rejection-reasons"] == "1 backend excluded by PrivacyReconciler"
    assert headers["content-type"] == "application/json"
    reason = body["context"]["rejection_reasons"][0]  # type: ignore[index]
    assert reason["code"] == "EXCLUSION_CODE_PRIVACY_ZONE" and reason["suggested_action"]
    # openai serves the model but the privacy policy excluded it: it cannot take the request
    assert body["context"]["available_backends"] == []  # type: ignore[index]

    status, headers, body = _reply(engine, decide(engine, "llama3:70b", min_tier=5))
    assert (status, body["error"]["code"]) == (503, "fallback_exhausted")  # type: ignore[index]
    assert headers["x-nexus-rejection-reasons"] == "2 backends excluded by TierReconciler"

    ledger = engine.ledger
    assert isinstance(ledger, MemoryLedger)
    ledger.seed_spend(GLOBAL, month_of(time.time()), 100 * 10**9)
    status, headers, body = _reply(engine, decide(engine, "gpt-3.5-turbo"))
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        429,
        "rate_limit_error",
        "budget_exhausted",
    )  # type: ignore[index]
    wait_ms = int(body["context"]["retry_after_ms"])  # type: ignore[index]
    assert int(headers["retry-after"]) == -(-wait_ms // 1000)
    message = body["error"]["message"]  # type: ignore[index]
    assert message.endswith(f"; retry after {text.ms(wait_ms)}")
    assert text.duration(wait_ms).split()[1] in ("d", "h")  # the month's end: days (and hours)


def test_available_backends_are_those_nothing_about_the_request_rules_out() -> None:
    engine = make_engine()
    decision = decide(engine, "llama3:70b", min_tier=5)
    assert available_backends(engine, decision) == []  # both below the tier the request needs
    tier, other = decision.exclusions[0], decision.exclusions[1]
    assert {tier.backend_id, other.backend_id} >= {"gpu-1", "gpu-2"}
    busy = tier._replace(backend_id="gpu-2", code=ExclusionCode.SATURATED)  # live load only
    assert available_backends(engine, decision._replace(exclusions=(tier, busy))) == ["gpu-2"]
    engine.registry.set_state("gpu-2", BackendStatus.UNHEALTHY)
    assert available_backends(engine, decision._replace(exclusions=(tier, busy))) == []


def test_summary_exposure_carries_only_codes_and_counts() -> None:
    engine = make_engine("summary")
    _, _, body = _reply(engine, decide(engine, "llama3:70b", min_tier=5))
    assert body["context"] == {
        "rejection_reasons": [{"code": "EXCLUSION_CODE_TIER_BELOW_MINIMUM", "count": 3}],
        "available_backend_count": 0,
    }


def test_queue_and_bad_request_replies() -> None:
    engine = make_engine()
    decision = decide(engine, "llama3:70b")
    queue = Queue("llama3:70b", "waiting_for:gpu-1", 1500, 1500)
    reply = queue_reply(decision, queue, held_ms=None)
    assert reply.status == 503 and dict(reply.headers)["retry-after"] == "2"
    assert json.loads(reply.body)["error"]["code"] == "queued"
    assert json.loads(queue_reply(decision, queue, held_ms=10).body)["error"]["code"] == "queue_timeout"
    bad = bad_request_reply(HeaderError("x-nexus-min-tier", "9 is out of range"))
    assert bad.status == 400
    assert json.loads(bad.body) == {
        "error": {
            "message": "x-nexus-min-tier: 9 is out of range",
            "type": "invalid_request_error",
            "param": "x-nexus-min-tier",
            "code": "invalid_header",
        }
    }


@pytest.mark.parametrize(
    ("exc", "code"),
    [(LedgerError("the budget ledger cannot store changes (disk full)"), "ledger_unavailable"),
     (Overloaded("server near max_concurrent_rpcs"), "overloaded")],
)  # fmt: skip
def test_errors_raised_while_deciding_are_a_json_answer(exc: Exception, code: str) -> None:
    """The ledger unavailable is a 503 (no backend can take it now); overload sheds with 429."""
    reply = error_reply(exc, "rid-7")
    status, kind = (429, "rate_limit_error") if code == "overloaded" else (503, "service_unavailable")
    assert reply.status == status
    headers = dict(reply.headers)
    assert headers == {"content-type": "application/json", "retry-after": "1", "x-nexus-request-id": "rid-7"}
    error = json.loads(reply.body)["error"]
    assert (error["type"], error["code"], error["param"]) == (kind, code, None)
    assert str(exc) in error["message"] and "rid-7" in error["message"]
    assert reply.details == f"nexus_{code}"


def test_any_other_error_is_a_500_that_tells_nothing() -> None:
    reply = error_reply(RuntimeError("secret detail"), "rid-8")
    assert reply.status == 500
    assert b"secret detail" not in reply.body and b"rid-8" in reply.body
    assert json.loads(reply.body)["error"]["code"] == "internal_error"
