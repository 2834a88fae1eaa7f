"""Envoy headers and OpenAI-style bodies → DecisionRequest (SPEC §6)."""

from __future__ import annotations

import json

import pytest

from nexus_grpc.config.loader import load_config_text
from nexus_grpc.config.schema import LimitsConfig
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.servicers.envoy.mapping import (
    EnvoyStats,
    HeaderError,
    RequestFields,
    apply_body,
    build_request,
    fields_from_headers,
    is_json_type,
    rewrite_model,
    usage_tokens,
)

LIMITS = LimitsConfig()
CONFIG = load_config_text("")


def fields(**headers: str) -> RequestFields:
    return fields_from_headers({k.replace("_", "-"): v for k, v in headers.items()}, LIMITS)


def test_every_header_maps_to_its_field() -> None:
    f = fields(
        x_request_id="rid-1",
        x_nexus_model="gpt-4",
        x_nexus_estimated_tokens="1200",
        x_nexus_max_output_tokens="300",
        x_nexus_tenant="team-a",
        x_nexus_privacy="Restricted",
        x_nexus_min_tier="3",
        x_nexus_flexible="YES",
        x_nexus_priority="high",
    )
    request = build_request(f, CONFIG)
    assert request.request_id == "rid-1"
    assert request.model == "gpt-4"
    assert (request.estimated_input_tokens, request.max_output_tokens) == (1200, 300)
    assert request.tenant == "team-a"
    assert request.privacy == PrivacyZone.RESTRICTED
    assert request.min_tier == 3
    assert request.tier_mode == TierMode.FLEXIBLE
    assert request.priority == Priority.HIGH


def test_defaults_and_generated_request_id() -> None:
    request = build_request(fields(x_nexus_model="m"), CONFIG)
    assert len(request.request_id) == 32
    assert request.privacy == PrivacyZone.UNSPECIFIED
    assert request.tier_mode == TierMode.UNSPECIFIED
    assert request.priority == Priority.UNSPECIFIED
    assert (request.estimated_input_tokens, request.max_output_tokens, request.min_tier) == (0, 0, 0)


@pytest.mark.parametrize("value", ["true", "1", "yes", "True", " YES "])
def test_flexible_values(value: str) -> None:
    assert fields(x_nexus_flexible=value).tier_mode == TierMode.FLEXIBLE


def test_strict_present_wins_over_flexible() -> None:
    assert fields(x_nexus_flexible="true", x_nexus_strict="").tier_mode == TierMode.STRICT
    assert fields(x_nexus_flexible="false").tier_mode == TierMode.UNSPECIFIED


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-nexus-estimated-tokens", "abc"),
        ("x-nexus-estimated-tokens", "-1"),
        ("x-nexus-estimated-tokens", "1.5"),
        ("x-nexus-estimated-tokens", "10000001"),
        ("x-nexus-max-output-tokens", "lots"),
        ("x-nexus-min-tier", "6"),
        ("x-nexus-privacy", "secret"),
        ("x-nexus-flexible", "maybe"),
        ("x-nexus-priority", "urgent"),
        ("x-nexus-tenant", "t" * 129),
        ("x-nexus-model", "m" * 257),
        ("x-request-id", "r" * 129),
    ],
)
def test_malformed_values_name_the_header(header: str, value: str) -> None:
    with pytest.raises(HeaderError) as err:
        fields_from_headers(
            {header: value, "x-nexus-model": "m"} if header != "x-nexus-model" else {header: value}, LIMITS
        )
    assert err.value.param == header
    assert str(err.value).startswith(f"{header}: ")


def test_missing_model_and_required_tenant() -> None:
    with pytest.raises(HeaderError) as err:
        build_request(fields(), CONFIG)
    assert (err.value.param, err.value.code) == ("model", "model_required")
    strict = load_config_text("[routing.budget]\nmonthly_limit_usd = 10.0\nrequire_tenant = true\n")
    with pytest.raises(HeaderError) as err:
        build_request(fields(x_nexus_model="m"), strict)
    assert err.value.param == "x-nexus-tenant"


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def test_openai_body_fills_in_the_request() -> None:
    f = fields()
    stats = EnvoyStats()
    document = {
        "model": "gpt-4",
        "messages": [
            {"role": "system", "content": "ab" * 10},  # 20 bytes
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "é" * 10},  # 20 bytes
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                    {"type": "text", "text": 42},  # not a string: not counted
                ],
            },
            {"role": "assistant", "content": None},
            "junk",
        ],
        "tools": [{"type": "function"}],
        "response_format": {"type": "json_object"},
        "stream": True,
        "max_completion_tokens": 77,
        "max_tokens": 99,
    }
    parsed = apply_body(f, body(document), LIMITS, stats)
    assert parsed is not None and parsed.model == "gpt-4"
    request = build_request(f, CONFIG)
    assert request.model == "gpt-4"
    assert request.estimated_input_tokens == 40 // 4
    assert request.max_output_tokens == 77
    assert (request.needs_vision, request.needs_tools, request.needs_json_mode, request.stream) == (
        True,
        True,
        True,
        True,
    )
    assert stats.bodies_read == 1


def test_body_defaults_and_max_tokens_fallback() -> None:
    f = fields()
    apply_body(f, body({"model": "m", "max_tokens": 12, "tools": [], "stream": "yes"}), LIMITS, EnvoyStats())
    request = build_request(f, CONFIG)
    assert request.max_output_tokens == 12
    assert request.estimated_input_tokens == 0
    assert not (request.needs_tools or request.stream or request.needs_vision or request.needs_json_mode)


def test_headers_win_over_the_body() -> None:
    f = fields(x_nexus_model="from-header", x_nexus_estimated_tokens="5", x_nexus_max_output_tokens="6")
    apply_body(
        f,
        body({"model": "from-body", "messages": [{"content": "x" * 400}], "max_tokens": 9}),
        LIMITS,
        EnvoyStats(),
    )
    request = build_request(f, CONFIG)
    assert (request.model, request.estimated_input_tokens, request.max_output_tokens) == ("from-header", 5, 6)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"", b"\xff\xfe"])
def test_bodies_that_are_not_json_objects_are_ignored_and_counted(raw: bytes) -> None:
    stats = EnvoyStats()
    f = fields(x_nexus_model="m")
    assert apply_body(f, raw, LIMITS, stats) is None
    assert stats.bodies_ignored == 1 and stats.bodies_read == 0
    assert build_request(f, CONFIG).model == "m"


def test_body_field_types_are_checked_quietly() -> None:
    f = fields()
    apply_body(
        f,
        body({"model": 5, "max_tokens": -3, "max_completion_tokens": True, "messages": "x"}),
        LIMITS,
        EnvoyStats(),
    )
    assert f.model == "" and f.max_output_tokens is None and f.estimated_input_tokens == 0
    with pytest.raises(HeaderError) as err:
        apply_body(fields(), body({"model": "m" * 300}), LIMITS, EnvoyStats())
    assert err.value.param == "model"


def test_token_counts_are_capped_at_the_limit() -> None:
    f = fields()
    apply_body(f, body({"model": "m", "max_tokens": 10**12}), LIMITS, EnvoyStats())
    assert f.max_output_tokens == LIMITS.max_tokens


def test_rewrite_model_only_when_it_changed() -> None:
    parsed = apply_body(fields(), body({"model": "gpt-4", "n": 1, "text": "é"}), LIMITS, EnvoyStats())
    assert parsed is not None
    assert rewrite_model(parsed, "gpt-4") is None
    rewritten = rewrite_model(parsed, "llama3:70b")
    assert rewritten is not None
    assert json.loads(rewritten) == {"model": "llama3:70b", "n": 1, "text": "é"}
    assert parsed.document["model"] == "gpt-4"  # the parsed body is not modified
    no_model = apply_body(fields(x_nexus_model="m"), body({"messages": []}), LIMITS, EnvoyStats())
    assert no_model is not None and rewrite_model(no_model, "other") is None


def test_usage_tokens() -> None:
    assert usage_tokens(body({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}), 100) == (3, 4)
    assert usage_tokens(body({"usage": {"input_tokens": 5, "output_tokens": 6}}), 100) == (5, 6)
    assert usage_tokens(body({"usage": {"prompt_tokens": 500}}), 100) == (100, None)
    assert usage_tokens(body({"choices": []}), 100) == (None, None)
    assert usage_tokens(b"data: {}", 100) == (None, None)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_is_json_type(content_type: str | None, expected: bool) -> None:
    assert is_json_type(content_type) is expected
