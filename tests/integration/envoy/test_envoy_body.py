"""`[envoy] read_body = true`: the buffered OpenAI-style body fills in the request, a changed model
is written back into the body the backend receives (ext_proc), and a body the policy did not judge
never reaches a backend (ext_proc and ext_authz alike)."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from envoy_stack import StackFactory
from support.upstream import Answer

pytestmark = pytest.mark.envoy

JSON = {"content-type": "application/json"}


def test_body_model_alias_is_rewritten_for_the_backend(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_body=True)
    document = {
        "model": "gpt-4",
        "messages": [{"role": "user", "content": "héllo wörld"}],
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
        "temperature": 0.25,
        "max_tokens": 64,
    }
    resp = stack.http(headers=JSON, body=json.dumps(document))
    assert resp.status == 200, resp.body
    received = stack.upstreams["gpu-1"].received[0]
    assert received.json() == {**document, "model": "llama3:70b"}  # only the model changed
    assert received.headers["content-length"] == str(len(received.body))
    assert received.headers["x-nexus-model"] == "llama3:70b"
    assert stack.nx.stats.bodies_read == 1 and stack.nx.stats.bodies_rewritten == 1

    # a chunked request body is rewritten and re-framed too (Envoy needs the new content-length)
    raw = json.dumps(document).encode()
    conn = http.client.HTTPConnection("127.0.0.1", stack.envoy.port, timeout=30)
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=iter([raw[:9], raw[9:]]), headers=JSON, encode_chunked=True
        )
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    received = stack.upstreams["gpu-1"].received[1]
    assert received.json() == {**document, "model": "llama3:70b"}
    assert received.headers["content-length"] == str(len(received.body))


def test_body_fills_tokens_and_capabilities(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_body=True)
    nx = stack.nx
    before = nx.spent()
    # 4000 UTF-8 bytes of text (string content + a text part) → 1000 input tokens; 200 output
    document = {
        "model": "gpt-3.5-turbo",
        "messages": [
            {"role": "system", "content": "s" * 1000},
            {"role": "user", "content": [{"type": "text", "text": "é" * 1500}]},
        ],
        "max_completion_tokens": 200,
        "max_tokens": 999,
    }
    assert stack.http(headers=JSON, body=json.dumps(document)).status == 200
    # estimate charged: 1000 * 0.0005/1000 + 200 * 0.0015/1000
    assert nx.spent() - before == pytest.approx(0.0008, abs=1e-9)
    received = stack.upstreams["openai"].received[0]
    assert received.json() == document  # model unchanged: the body is forwarded as sent

    # an image part needs vision: only the cloud backend of shared-7b has it
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    vision = {"model": "shared-7b", "messages": [{"role": "user", "content": [image]}]}
    assert stack.http(headers=JSON, body=json.dumps(vision)).json()["served_by"] == "openai"
    plain = {"model": "shared-7b", "messages": [{"role": "user", "content": "hi"}]}
    assert stack.http(headers=JSON, body=json.dumps(plain)).json()["served_by"] == "gpu-1"
    # ...and a restricted request that needs vision is refused rather than sent to the cloud
    resp = stack.http(headers={**JSON, "x-nexus-privacy": "restricted"}, body=json.dumps(vision))
    assert resp.status == 503
    assert {r["code"] for r in resp.json()["context"]["rejection_reasons"]} == {
        "EXCLUSION_CODE_PRIVACY_ZONE",
        "EXCLUSION_CODE_MISSING_CAPABILITY",
    }
    assert len(stack.upstreams["openai"].received) == 2


def test_header_and_body_models_that_disagree_are_a_400_naming_both(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_body=True)
    # the policy would judge gpt-4 (restricted, local) while the backend read gpt-3.5-turbo
    body = json.dumps({"model": "gpt-3.5-turbo", "messages": []})
    resp = stack.http(headers={**JSON, "x-nexus-model": "gpt-4"}, body=body)
    assert resp.status == 400, resp.body
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_mismatch")
    assert "'gpt-4'" in error["message"] and "'gpt-3.5-turbo'" in error["message"]
    # the same model in both is fine, and the body's is what gets rewritten to the routed model
    body = json.dumps({"model": "gpt-4", "messages": []})
    resp = stack.http(headers={**JSON, "x-nexus-model": "gpt-4"}, body=body)
    assert resp.json()["served_by"] == "gpu-1"
    assert stack.upstreams["gpu-1"].received[0].json()["model"] == "llama3:70b"
    assert stack.received() == {"gpu-1": 1, "gpu-2": 0, "openai": 0}


@pytest.mark.parametrize("name", ["ext_proc", "ext_authz"])
def test_bodies_that_would_be_read_otherwise_upstream_are_refused(
    make_stack: StackFactory, name: str
) -> None:
    stack = make_stack(name, read_body=True)
    header = {"x-nexus-model": "gpt-3.5-turbo"}
    cases = [
        # two "model" keys: Python keeps the last, other parsers the first
        ({**JSON}, '{"model": "gpt-3.5-turbo", "model": "gpt-4-turbo"}', "model", "invalid_body"),
        # Go's encoding/json reads "Model" as "model"
        ({**JSON}, '{"model": "gpt-3.5-turbo", "Model": "gpt-4-turbo"}', "model", "invalid_body"),
        ({**JSON, **header}, '{"Model": "gpt-4-turbo"}', "model", "invalid_body"),
        ({**JSON, **header}, '{"model": "gpt-3.5-turbo", "n": 1, "n": 2}', "body", "invalid_body"),
        # declared JSON (or no content type at all) but not JSON
        ({**JSON, **header}, "{not json", "body", "invalid_body"),
        (header, '{"model": "gpt-4-turbo"', "body", "invalid_body"),
        ({**JSON, **header}, '{"model": "gpt-3.5-turbo", "t": NaN}', "body", "invalid_body"),
        # another content type that is a JSON object naming another model anyway
        ({"content-type": "text/plain", **header}, '{"model": "gpt-4-turbo"}', "model", "model_mismatch"),
        # invisible characters in the body's model, refused as they are in x-nexus-model
        ({**JSON}, json.dumps({"model": "gpt-3.5-turbo\u200b"}), "model", "invalid_body"),
        ({**JSON}, '{"model": "gpt-3.5\\u007fturbo"}', "model", "invalid_body"),
        ({**JSON}, json.dumps({"model": "gpt-3.5-turbo\u202e"}), "model", "invalid_body"),
        # token counts above [limits] max_tokens, as DecideRequest refuses them
        ({**JSON}, '{"model": "gpt-3.5-turbo", "max_tokens": 10000001}', "max_tokens", "invalid_body"),
        ({**JSON}, '{"model": "m", "max_completion_tokens": 999999999999}', "max_completion_tokens",
         "invalid_body"),
        ({**JSON, "x-nexus-max-output-tokens": "10000001"}, '{"model": "gpt-3.5-turbo"}',
         "x-nexus-max-output-tokens", "invalid_header"),
    ]  # fmt: skip
    for headers, body, param, code in cases:
        resp = stack.http(headers=headers, body=body)
        assert resp.status == 400, (body, resp.body)
        error = resp.json()["error"]
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), body
        assert error["message"].startswith(f"{param}: ")
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_invisible_characters_in_headers_are_refused_by_name(make_stack: StackFactory) -> None:
    # DEL and other controls never get past Envoy's own HTTP/1 parser; what reaches nexus-grpc
    # (format characters, bytes that are not UTF-8) is refused as the gRPC API refuses it
    stack = make_stack("ext_proc", read_body=True)
    for value in ("gpt-4\u200b".encode(), "gpt\u202e-4".encode(), b"gpt-4\xff"):
        resp = _raw_get(stack.envoy.port, b"x-nexus-model: " + value)
        assert resp.startswith(b"HTTP/1.1 400 "), resp
        error = json.loads(resp.split(b"\r\n\r\n", 1)[1])["error"]
        assert (error["param"], error["code"]) == ("x-nexus-model", "invalid_header")
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def _raw_get(port: int, header: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: test\r\nconnection: close\r\n" + header + b"\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_non_json_bodies_are_forwarded_unread(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_body=True)
    nx = stack.nx
    resp = stack.http(headers={"content-type": "text/plain", "x-nexus-model": "gpt-4"}, body="just text")
    assert resp.status == 200
    assert stack.upstreams["gpu-1"].received[0].body == b"just text"
    # a JSON object of another content type naming the judged model passes unchanged
    raw = '{"model": "gpt-4", "input": "x"}'
    resp = stack.http(headers={"content-type": "text/plain", "x-nexus-model": "gpt-4"}, body=raw)
    assert resp.status == 200
    assert stack.upstreams["gpu-1"].received[1].body == raw.encode()
    assert nx.stats.bodies_ignored == 2 and nx.stats.bodies_read == 0


def test_no_model_after_headers_and_body_is_a_400(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_body=True)
    for body in ('{"messages": []}', "[1, 2]", '{"model": null}'):
        resp = stack.http(headers=JSON, body=body)
        assert resp.status == 400, body
        error = resp.json()["error"]
        assert (error["param"], error["code"], error["type"]) == (
            "model",
            "model_required",
            "invalid_request_error",
        )
    assert stack.received() == {"gpu-1": 0, "gpu-2": 0, "openai": 0}


def test_stream_requests_report_ttft_and_pass_the_stream_through(make_stack: StackFactory) -> None:
    stack = make_stack("ext_proc", read_body=True, read_response_usage=True)
    stack.upstreams["openai"].answer = Answer(stream=True, delay=0.3)
    body = json.dumps(
        {"model": "gpt-3.5-turbo", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    resp = stack.http(headers=JSON, body=body)
    assert resp.status == 200
    assert resp.body.count(b"data: ") == 4 and resp.body.endswith(b"data: [DONE]\n\n")
    backend = stack.nx.backend("openai")
    assert 250 <= backend.avg_ttft_ms < 2000  # time to response headers, for a streamed request
    assert backend.in_flight == 0


def test_large_image_body_within_the_raised_buffer_limit(make_stack: StackFactory) -> None:
    # Envoy's default buffer limit is 1 MiB; the shipped config allows image-sized bodies
    stack = make_stack("ext_proc", read_body=True, read_response_usage=True)
    nx = stack.nx
    stack.upstreams["openai"].answer = Answer(usage={"prompt_tokens": 1000, "completion_tokens": 0})
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 2_500_000}}
    document = {"model": "shared-7b", "messages": [{"role": "user", "content": [image]}]}
    before = nx.spent()
    resp = stack.http(headers=JSON, body=json.dumps(document))
    assert resp.status == 200, resp.body[:300]
    assert resp.json()["served_by"] == "openai"  # vision, read from the 2.5 MB body
    assert len(stack.upstreams["openai"].received[0].body) > 2_500_000
    assert nx.spent() - before == pytest.approx(0.001, abs=1e-9)  # usage: 1000 * 0.001/1000
