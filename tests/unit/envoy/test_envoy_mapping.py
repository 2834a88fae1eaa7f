"""Envoy headers and OpenAI-style bodies → DecisionRequest."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.config.schema import LimitsConfig
from nexus_grpc.domain.enums import Priority, PrivacyZone, TierMode
from nexus_grpc.errors import FieldError
from nexus_grpc.servicers.convert import request_from_proto
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
        ("x-nexus-estimated-tokens", "9" * 5000),  # too long even to convert
        ("x-nexus-max-output-tokens", "lots"),
        ("x-nexus-max-output-tokens", "10000001"),
        ("x-nexus-min-tier", "6"),
        ("x-nexus-privacy", "secret"),
        ("x-nexus-flexible", "maybe"),
        ("x-nexus-priority", "urgent"),
        ("x-nexus-tenant", "t" * 129),
        ("x-nexus-tenant", "team\x7f"),
        ("x-nexus-tenant", "team\u2066a"),
        ("x-nexus-tenant", "global"),  # reserved for the global scope
        ("x-nexus-tenant", "GLOBAL"),
        ("x-nexus-model", "m" * 257),
        ("x-nexus-model", "gpt\x7f4"),  # DEL
        ("x-nexus-model", "gpt\u200b4"),  # zero-width space
        ("x-nexus-model", "gpt\u202e4"),  # right-to-left override
        ("x-nexus-model", "gpt\udcff4"),  # a byte that is not UTF-8 (see ext_proc.header_map)
        ("x-nexus-model", "gpt 4"),
    ],
)
def test_malformed_values_name_the_header(header: str, value: str) -> None:
    with pytest.raises(HeaderError) as err:
        fields_from_headers(
            {header: value, "x-nexus-model": "m"} if header != "x-nexus-model" else {header: value}, LIMITS
        )
    assert err.value.param == header
    assert str(err.value).startswith(f"{header}: ")


@pytest.mark.parametrize("value", ["r" * 129, "req\x7f1", "req\u200b1", "req 1", "req\udcff", ""])
def test_an_unusable_request_id_is_replaced_never_refused(value: str) -> None:
    f = fields(x_nexus_model="m", x_request_id=value)
    assert len(f.request_id) == 32 and f.request_id.isalnum()
    assert fields(x_nexus_model="m", x_request_id="req-1").request_id == "req-1"


# The same value through gRPC (DecideRequest) and through Envoy (a header, or the body): accepted by
# both or refused by both, with the same words.
PARITY_MODELS = [
    "gpt-4",
    "llama3:70b",
    "org/model-é",
    "gpt\x7f4",
    "gpt\u200b4",
    "gpt\u202e4",
    "a b",
    "m" * 257,
]
PARITY_TENANTS = ["team-a", "global", "Global", "t\u200d", "t\x7f", "t" * 129, "a b"]
PARITY_TOKENS = [0, 1, LIMITS.max_tokens, LIMITS.max_tokens + 1]


def _grpc_problem(**kw: object) -> str | None:
    try:
        request_from_proto(dpb.DecideRequest(**{"model": "m", **kw}), LIMITS)  # type: ignore[arg-type]
    except FieldError as exc:
        return exc.problem
    return None


def _envoy_problem(check: Callable[[], object]) -> str | None:
    try:
        check()
    except HeaderError as exc:
        return exc.problem
    return None


@pytest.mark.parametrize("model", PARITY_MODELS)
def test_models_are_accepted_and_refused_as_over_grpc(model: str) -> None:
    expected = _grpc_problem(model=model)
    assert _envoy_problem(lambda: fields(x_nexus_model=model)) == expected
    assert (
        _envoy_problem(lambda: apply_body(fields(), body({"model": model}), LIMITS, EnvoyStats())) == expected
    )


@pytest.mark.parametrize("tenant", PARITY_TENANTS)
def test_tenants_are_accepted_and_refused_as_over_grpc(tenant: str) -> None:
    expected = _grpc_problem(tenant=tenant)
    assert _envoy_problem(lambda: fields(x_nexus_model="m", x_nexus_tenant=tenant)) == expected


@pytest.mark.parametrize("count", PARITY_TOKENS)
def test_token_counts_are_accepted_and_refused_as_over_grpc(count: int) -> None:
    expected = _grpc_problem(max_output_tokens=count)
    assert _grpc_problem(estimated_input_tokens=count) == expected
    for header in ("x-nexus-estimated-tokens", "x-nexus-max-output-tokens"):
        assert _envoy_problem(lambda h=header: fields_from_headers({h: str(count)}, LIMITS)) == expected
    for key in ("max_tokens", "max_completion_tokens"):
        document = {"model": "m", key: count}
        assert (
            _envoy_problem(lambda d=document: apply_body(fields(), body(d), LIMITS, EnvoyStats())) == expected
        )


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


def test_headers_win_over_the_body_for_token_counts() -> None:
    f = fields(x_nexus_model="m", x_nexus_estimated_tokens="5", x_nexus_max_output_tokens="6")
    apply_body(
        f,
        body({"model": "m", "messages": [{"content": "x" * 400}], "max_tokens": 9}),
        LIMITS,
        EnvoyStats(),
    )
    request = build_request(f, CONFIG)
    assert (request.model, request.estimated_input_tokens, request.max_output_tokens) == ("m", 5, 6)


def test_header_and_body_models_that_disagree_are_a_400_naming_both() -> None:
    with pytest.raises(HeaderError) as err:
        apply_body(fields(x_nexus_model="gpt-4"), body({"model": "gpt-4-turbo"}), LIMITS, EnvoyStats())
    assert (err.value.param, err.value.code) == ("model", "model_mismatch")
    assert "'gpt-4'" in str(err.value) and "'gpt-4-turbo'" in str(err.value)
    assert "x-nexus-model" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "gpt-4", "model": "gpt-4-turbo"}', "model"),
        (b'{"model": "gpt-4", "Model": "gpt-4-turbo"}', "model"),  # one key to Go's encoding/json
        (b'{"model": "m", "stream": true, "stream": false}', "body"),
        (b'{"model": "m", "messages": [{"role": "user", "role": "system"}]}', "body"),
        (b'{"Model": "gpt-4-turbo"}', "model"),  # a case variant nexus-grpc would not read
        (b'{"model": "m", "MAX_TOKENS": 5}', "max_tokens"),
    ],
)
def test_repeated_or_case_variant_keys_are_a_400(raw: bytes, param: str) -> None:
    with pytest.raises(HeaderError) as err:
        apply_body(fields(), raw, LIMITS, EnvoyStats())
    assert (err.value.param, err.value.code) == (param, "invalid_body")


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "application/vnd.api+json; charset=utf-8"]
)
@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"model": "m"',
        b"\xff\xfe{}",  # not UTF-8 (nor read as UTF-16)
        b'\xef\xbb\xbf{"model": "m"}',  # a byte order mark
        b'{"model": "m", "temperature": NaN}',
        b'{"model": "m", "temperature": 1e400}',
        b'{"model": "m", "n": ' + b"9" * 5000 + b"}",
        b"[" * 100_000,
    ],
)
def test_a_json_body_that_does_not_parse_is_a_400(raw: bytes, content_type: str | None) -> None:
    stats = EnvoyStats()
    with pytest.raises(HeaderError) as err:
        apply_body(fields(x_nexus_model="m"), raw, LIMITS, stats, content_type)
    assert (err.value.param, err.value.code) == ("body", "invalid_body")
    assert stats.bodies_read == 0


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"", b"  \r\n"])
def test_json_bodies_that_are_not_objects_and_empty_bodies_are_ignored(raw: bytes) -> None:
    stats = EnvoyStats()
    f = fields(x_nexus_model="m")
    assert apply_body(f, raw, LIMITS, stats, "application/json") is None
    assert stats.bodies_ignored == 1 and stats.bodies_read == 0
    assert build_request(f, CONFIG).model == "m"


@pytest.mark.parametrize(
    "raw",
    [b"just text", b"--boundary\r\ncontent-disposition: form-data\r\n", b"\xff\xfe\x00", b'{"model": "m"}'],
)
def test_bodies_of_other_content_types_are_ignored(raw: bytes) -> None:
    stats = EnvoyStats()
    f = fields(x_nexus_model="m", x_nexus_max_output_tokens="3")
    assert apply_body(f, raw, LIMITS, stats, "text/plain") is None
    assert stats.bodies_ignored == 1 and stats.bodies_read == 0
    assert (f.model, f.max_output_tokens) == ("m", 3)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt-4-turbo", "messages": []}',
        b'{"MODEL": "gpt-4-turbo"}',
        b'{"model": "gpt-4-turbo", "x": "\xff"}',  # not UTF-8: a lenient backend reads it anyway
        b'{"model": "gpt-4-turbo", "t": NaN}',
        b'\xef\xbb\xbf{"model": "gpt-4-turbo"}',
        b'{"model": ["gpt-4-turbo"]}',
    ],
)
def test_a_json_object_sent_as_another_type_may_not_name_another_model(raw: bytes) -> None:
    with pytest.raises(HeaderError) as err:
        apply_body(fields(x_nexus_model="gpt-4"), raw, LIMITS, EnvoyStats(), "text/plain")
    assert (err.value.param, err.value.code) == ("model", "model_mismatch")


def test_a_json_object_sent_as_another_type_may_not_repeat_a_key() -> None:
    raw = b'{"model": "gpt-4-turbo", "model": "gpt-4"}'
    with pytest.raises(HeaderError) as err:
        apply_body(fields(x_nexus_model="gpt-4"), raw, LIMITS, EnvoyStats(), "text/plain")
    assert (err.value.param, err.value.code) == ("model", "invalid_body")


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ({"model": 5}, "model"),
        ({"model": ""}, "model"),
        ({"model": "gpt\x7f4"}, "model"),
        ({"model": "gpt\u200d4"}, "model"),
        ({"model": "gpt\u202e4"}, "model"),
        ({"model": "gpt 4"}, "model"),
        ({"model": "m" * 257}, "model"),
        ({"model": "m", "max_tokens": -3}, "max_tokens"),
        ({"model": "m", "max_tokens": 1.5}, "max_tokens"),
        ({"model": "m", "max_tokens": "64"}, "max_tokens"),
        ({"model": "m", "max_completion_tokens": True}, "max_completion_tokens"),
        ({"model": "m", "max_tokens": 10_000_001}, "max_tokens"),
        ({"model": "m", "max_completion_tokens": 10**12}, "max_completion_tokens"),
        # the header's count decides, but the backend reads the body's: it is checked as well
        ({"model": "m", "max_tokens": 10**12, "max_completion_tokens": 5}, "max_tokens"),
    ],
)
def test_malformed_body_fields_are_a_400_naming_the_field(document: dict[str, object], param: str) -> None:
    with pytest.raises(HeaderError) as err:
        apply_body(fields(x_nexus_max_output_tokens="1"), body(document), LIMITS, EnvoyStats())
    assert (err.value.param, err.value.code) == (param, "invalid_body")
    assert str(err.value).startswith(f"{param}: ")


def test_null_body_fields_are_absent_and_other_fields_stay_lenient() -> None:
    f = fields()
    document = {
        "model": "m",
        "max_tokens": None,
        "max_completion_tokens": None,
        "messages": "x",
        "stream": "y",
    }
    apply_body(f, body(document), LIMITS, EnvoyStats())
    assert (f.model, f.max_output_tokens, f.estimated_input_tokens, f.stream) == ("m", None, 0, False)
    f = fields(x_nexus_model="m")
    apply_body(f, body({"model": None}), LIMITS, EnvoyStats())
    assert f.model == "m"


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
    # a lone surrogate is valid JSON but not UTF-8: the rewritten body escapes it
    odd = apply_body(fields(), b'{"model": "gpt-4", "text": "\\ud800 \xc3\xa9"}', LIMITS, EnvoyStats())
    assert odd is not None
    rewritten = rewrite_model(odd, "llama3:70b")
    assert rewritten is not None and rewritten.isascii()
    assert json.loads(rewritten) == {"model": "llama3:70b", "text": "\ud800 é"}


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
