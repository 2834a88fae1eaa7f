"""Property tests of what a client controls at the Envoy edge: whatever the bytes, the body parser
and the header mapping either accept (with values the validator would accept) or raise the one
clean 400 error, HeaderError; nothing else escapes (a crash would be a 500 from the decision
service). 2,200 examples in all (600 + 600 + 600 + 400), a few seconds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_grpc.config.schema import LimitsConfig
from nexus_grpc.domain import validate
from nexus_grpc.servicers.envoy.mapping import (
    BODY_KEYS,
    Body,
    EnvoyStats,
    HeaderError,
    RequestFields,
    apply_body,
    fields_from_headers,
    rewrite_model,
)

LIMITS = LimitsConfig(max_tokens=1000, max_model_len=32)


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


CONTENT_TYPES = st.sampled_from(
    [None, "", "application/json", "application/json; charset=utf-8", "text/plain", "multipart/form-data"]
)
HEADER_MODELS = st.sampled_from(["", "gpt-4", "llama3:70b"])

# JSON values, with the keys and values nexus-grpc reads over-represented at the top level;
# strings may hold lone surrogates (valid JSON escapes, not UTF-8) and invisible characters.
text = st.text(st.characters(categories=["L", "N", "P", "Zs", "Cc", "Cf", "Cs"]), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)
known_key = st.sampled_from(
    [
        "model",
        "Model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "tools",
        "stream",
        "response_format",
    ]
)
known_value = st.one_of(
    values,
    st.sampled_from(["gpt-4", "llama3:70b", "gpt\u200b4", "m" * 40, "", "gpt\x7f4"]),
    st.integers(min_value=-5, max_value=2000),
    st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)}), max_size=3),
)
documents = st.dictionaries(known_key | text, known_value, max_size=6)
# Token soup: near-JSON text built from the pieces parsers disagree about.
TOKENS = [
    "{", "}", "[", "]", ":", ",", " ", '"model"', '"Model"', '"max_tokens"', '"messages"', '"gpt-4"',
    '"llama3:70b"', '"\\ud800"', '"\\u200b"', "NaN", "Infinity", "1e400", "-1", "10000000000", "1.5",
    "true", "null", '"x"', "\ufeff", "\x7f", "\udcff", '"content"', "9" * 30, "[" * 700, '{"a":' * 700,
]  # fmt: skip
soup = st.lists(st.sampled_from(TOKENS), max_size=25).map("".join)


def _check(fields: RequestFields, parsed: Body | None) -> None:
    """What apply_body lets through is what the validator accepts."""
    if fields.model:
        validate.model_name(fields.model, "model", LIMITS.max_model_len)
    for count in (fields.max_output_tokens, fields.estimated_input_tokens):
        assert count is None or 0 <= count <= LIMITS.max_tokens
    if parsed is not None:
        assert parsed.model is None or parsed.model == fields.model
        rewritten = rewrite_model(parsed, "routed-model")
        if rewritten is not None:
            assert json.loads(rewritten)["model"] == "routed-model"


def _apply(raw: bytes, content_type: str | None, header_model: str) -> None:
    fields = RequestFields(request_id="r", model=header_model)
    try:
        parsed = apply_body(fields, raw, LIMITS, EnvoyStats(), content_type)
    except HeaderError as exc:
        assert exc.code in ("invalid_body", "model_mismatch")
        assert exc.param in {"body", *BODY_KEYS}
        return
    _check(fields, parsed)


@fuzz(600)
@given(st.binary(max_size=200), CONTENT_TYPES, HEADER_MODELS)
def test_random_bytes_never_raise_anything_but_a_400(
    raw: bytes, content_type: str | None, model: str
) -> None:
    _apply(raw, content_type, model)


@fuzz(600)
@given(documents, CONTENT_TYPES, HEADER_MODELS, st.booleans(), st.booleans())
def test_random_json_documents_never_raise_anything_but_a_400(
    document: dict[str, Any], content_type: str | None, model: str, ascii_only: bool, routable: bool
) -> None:
    if routable:  # a valid model, so that the rest of the document is read and rewritten
        document = {**{k: v for k, v in document.items() if k.casefold() != "model"}, "model": "gpt-4"}
        model = ""
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    _apply(raw, content_type, model)
    # a JSON document that was accepted is read as it was written
    fields = RequestFields(request_id="r", model=model)
    try:
        parsed = apply_body(fields, raw, LIMITS, EnvoyStats(), "application/json")
    except HeaderError:
        return
    assert parsed is not None
    body_model = document.get("model")
    assert fields.model == (body_model if body_model is not None else model)
    _check(fields, parsed)


header_names = st.sampled_from(
    [
        "x-request-id",
        "x-nexus-model",
        "x-nexus-tenant",
        "x-nexus-estimated-tokens",
        "x-nexus-max-output-tokens",
        "x-nexus-min-tier",
        "x-nexus-privacy",
        "x-nexus-flexible",
        "x-nexus-priority",
        "x-nexus-strict",
    ]
)


@fuzz(600)
@given(soup, CONTENT_TYPES, HEADER_MODELS)
def test_near_json_text_never_raises_anything_but_a_400(
    raw: str, content_type: str | None, model: str
) -> None:
    _apply(
        raw.encode("utf-8", "surrogateescape" if "\udcff" in raw else "surrogatepass"), content_type, model
    )


@fuzz(400)
@given(st.dictionaries(header_names, st.text(max_size=40) | st.from_regex(r"[0-9]{1,30}", fullmatch=True)))
def test_random_headers_never_raise_anything_but_a_400(headers: dict[str, str]) -> None:
    try:
        fields = fields_from_headers(headers, LIMITS)
    except HeaderError as exc:
        assert exc.param in headers
        return
    validate.identifier(fields.request_id, "x-request-id", LIMITS.max_id_len, required=True)
    validate.model_name(fields.model, "model", LIMITS.max_model_len)
    validate.tenant(fields.tenant, "tenant", LIMITS.max_id_len)
    for count in (fields.estimated_input_tokens, fields.max_output_tokens):
        assert count is None or 0 <= count <= LIMITS.max_tokens
