"""Careless and hostile HTTP clients (and big backend answers) against the real Envoy on the
shipped configs: slow or stalled requests end with 408, oversized bodies with 413, a response too
big to read for its usage passes through; never a hang. Timeouts are shortened from the
shipped values (the tests name each one they change) so that a case takes seconds."""

from __future__ import annotations

import json

import pytest
from envoy_stack import StackFactory, raw_request
from support.upstream import Answer

pytestmark = pytest.mark.envoy

CONFIGS = ("ext_proc", "ext_authz")
SHIPPED_REQUEST_TIMEOUT = {"ext_proc": "request_timeout: 90s", "ext_authz": "request_timeout: 60s"}
BUFFER_LIMIT = 3 * 1024 * 1024  # per_connection_buffer_limit_bytes in both shipped configs
GPT35_1000 = 0.00125  # gpt-3.5-turbo estimate: 1000 input tokens, 500 output


def _head(content_type: str | None, length: int | None, **headers: str) -> bytes:
    lines = [b"POST /v1/chat/completions HTTP/1.1", b"host: test"]
    if content_type:
        lines.append(b"content-type: " + content_type.encode())
    lines.append(b"content-length: %d" % length if length is not None else b"transfer-encoding: chunked")
    lines += [f"{k.replace('_', '-')}: {v}".encode() for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _chunked(body: bytes, size: int = 16384) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _document(text_bytes: int) -> bytes:
    return json.dumps(
        {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "A" * text_bytes}]}
    ).encode()


@pytest.mark.parametrize("name", CONFIGS)
def test_a_slow_or_stalled_body_ends_with_408_within_the_request_timeout(
    make_stack: StackFactory, name: str
) -> None:
    stack = make_stack(
        name, read_body=True, envoy_replace={SHIPPED_REQUEST_TIMEOUT[name]: "request_timeout: 3s"}
    )
    body = _document(100)
    # one byte every 0.5 s: it would take a minute to arrive
    slow = raw_request(stack.envoy.port, _head("application/json", len(body)), body, byte_delay=0.5)
    assert slow.status == 408, slow.head
    assert 2.5 <= slow.elapsed < 5.0
    assert not slow.sent_all
    # headers, then nothing: the same
    stalled = raw_request(stack.envoy.port, _head("application/json", len(body)), b"")
    assert stalled.status == 408, stalled.head
    assert 2.5 <= stalled.elapsed < 5.0
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert stack.nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert stack.envoy.stats("downstream_rq_timeout")["http.llm_ingress.downstream_rq_timeout"] == 2


@pytest.mark.parametrize("name", CONFIGS)
def test_slow_headers_end_with_408_within_the_request_headers_timeout(
    make_stack: StackFactory, name: str
) -> None:
    stack = make_stack(name, envoy_replace={"request_headers_timeout: 10s": "request_headers_timeout: 2s"})
    partial = b"GET /v1/models HTTP/1.1\r\nhost: test\r\nx-nexus-model: gpt-4\r\n"  # never finished
    result = raw_request(stack.envoy.port, partial)
    assert result.status == 408, result.head
    assert 1.8 <= result.elapsed < 4.0
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_body_above_the_limit_gets_413_at_once(make_stack: StackFactory, name: str) -> None:
    # Before the fix, ext_proc.yaml started with request_body_mode NONE and switched to BUFFERED
    # per request: a body above the buffer limit that arrived meanwhile made Envoy hang (most
    # often with 8 MB and a content-length); ext_authz.yaml had no limit at all.
    stack = make_stack(name, read_body=True)
    for size in (BUFFER_LIMIT + 200_000, 8_000_000):
        body = _document(size)
        for content_type in ("application/json", None, "text/plain"):
            for framing in ("content-length", "chunked"):
                length = len(body) if framing == "content-length" else None
                head = _head(content_type, length, x_nexus_model="gpt-3.5-turbo")
                payload = body if length is not None else _chunked(body)
                result = raw_request(stack.envoy.port, head, payload, timeout=10)
                case = (size, content_type, framing, result.head[:60], round(result.elapsed, 2))
                assert result.status == 413, case
                assert result.elapsed < 2.0, case
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}
    assert stack.nx.in_flight() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_body_just_below_the_limit_is_served(make_stack: StackFactory, name: str) -> None:
    stack = make_stack(name, read_body=True)
    body = _document(BUFFER_LIMIT - 1000)
    assert len(body) <= BUFFER_LIMIT
    for framing in ("content-length", "chunked"):
        if framing == "chunked":
            head, payload = _head("application/json", None), _chunked(body)
        else:
            head, payload = _head("application/json", len(body)), body
        result = raw_request(stack.envoy.port, head, payload, timeout=10)
        assert result.status == 200, (framing, result.head)
    assert stack.received()["openai"] == 2
    assert len(stack.upstreams["openai"].received[1].body) == len(body)


@pytest.mark.parametrize("name", CONFIGS)
def test_headers_with_underscores_never_reach_a_backend(make_stack: StackFactory, name: str) -> None:
    # x_nexus_tenant escapes the early strip of x-nexus-tenant, and some backends read `_` as `-`
    stack = make_stack(name)
    forged = {"x_nexus_tenant": "someone-else", "x_nexus_backend": "openai"}
    resp = stack.http(headers={"x-nexus-model": "gpt-4", **forged})
    assert resp.status == 200 and resp.json()["served_by"] == "gpu-1"
    got = stack.upstreams["gpu-1"].received[0].headers
    assert not any("_" in name for name in got)


def test_a_large_or_chunked_response_is_passed_through_not_read_for_usage(make_stack: StackFactory) -> None:
    # Asking Envoy to buffer a response body larger than its buffer made the client wait for ever:
    # only responses with a content-length within USAGE_BODY_MAX are read for their `usage`.
    stack = make_stack("ext_proc", read_response_usage=True)
    nx = stack.nx
    cloud = stack.upstreams["openai"]
    usage = {"prompt_tokens": 2000, "completion_tokens": 100}  # 0.00115 USD; the estimate is 0.00125
    headers = {"x-nexus-model": "gpt-3.5-turbo", "x-nexus-estimated-tokens": "1000"}
    cases = [
        (Answer(usage=usage, extra={"pad": "x" * 1000}), 0.00115),  # small: read, charged by usage
        (Answer(usage=usage, extra={"pad": "x" * 5_000_000}), GPT35_1000),  # above the buffer
        (Answer(usage=usage, extra={"pad": "x" * 2_000_000}), GPT35_1000),  # above USAGE_BODY_MAX
        (Answer(usage=usage, chunked=True, extra={"pad": "x" * 5_000_000}), GPT35_1000),
        (Answer(usage=usage, chunked=True), GPT35_1000),  # chunked: its size is unknown
    ]
    for answer, charged in cases:
        cloud.answer = answer
        before = nx.spent()
        resp = stack.http(headers=headers, body="{}")
        assert resp.status == 200
        assert resp.json()["usage"] == usage  # the whole body reached the client
        assert nx.spent() - before == pytest.approx(charged, abs=1e-9), answer.extra.keys()
        assert nx.in_flight()["openai"] == 0
    assert nx.stats.responses_not_read == 4
