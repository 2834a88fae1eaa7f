"""ext_proc in full-duplex streaming mode (what endpoint-picking gateways configure), over a real
grpc.aio channel with scripted Envoy messages: the mode is read from the first message's
protocol_config; the headers' answer waits for the body's end (or its trailers), then carries
the decision (header, dynamic metadata, route cache cleared) and the body streams back in pieces
of at most 62 000 bytes, the last ending the stream; the endpoint subset narrows the candidates;
the served endpoint picks the backend the outcome belongs to; responses stream through with their
usage read on the way."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2
from support.net import async_wait_until

from nexus_grpc.app import Runtime, ServeOptions
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.ledger.base import month_of
from nexus_grpc.servicers.envoy import envoy_stats
from nexus_grpc.servicers.envoy.ext_proc import BODY_CHUNK, chunks, streamed_bodies

MODE = processing_mode_pb2.ProcessingMode
CONFIG = """
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
[ledger]
kind = "memory"
[envoy]
read_body = {read_body}
[routing]
strategy = "priority_only"
[routing.aliases]
"nick" = "m"
[[backends]]
id = "a"
url = "http://10.0.0.1:8000"
type = "generic"
zone = "restricted"
priority = 1
[backends.pricing]
input_per_1k = 1.0
output_per_1k = 2.0
[[backends.models]]
id = "m"
[[backends]]
id = "b"
url = "http://10.0.0.2:8000"
type = "generic"
zone = "restricted"
priority = 2
[backends.pricing]
input_per_1k = 1.0
output_per_1k = 2.0
[[backends.models]]
id = "m"
[[backends]]
id = "c"
url = "http://10.0.0.3:8000"
type = "generic"
zone = "restricted"
priority = 3
[[backends.models]]
id = "m"
[[backends]]
id = "cloud"
url = "https://api.example.com"
type = "openai"
priority = 0
[[backends.models]]
id = "m"
"""


def test_chunks_are_at_most_62000_bytes_and_only_the_last_ends_the_stream() -> None:
    body = bytes(range(256)) * 800  # 204 800 bytes
    pieces = chunks(body)
    assert [len(p) for p in pieces] == [BODY_CHUNK] * 3 + [len(body) - 3 * BODY_CHUNK]
    assert BODY_CHUNK == 62_000 and b"".join(pieces) == body
    assert [len(p) for p in chunks(b"x" * (2 * BODY_CHUNK))] == [BODY_CHUNK, BODY_CHUNK]
    assert chunks(b"") == [b""]
    answers = streamed_bodies(body, end=True)
    flags = [a.request_body.response.body_mutation.streamed_response.end_of_stream for a in answers]
    assert flags == [False, False, False, True]
    assert b"".join(a.request_body.response.body_mutation.streamed_response.body for a in answers) == body
    assert not any(  # trailers follow: no piece ends the stream
        a.request_body.response.body_mutation.streamed_response.end_of_stream
        for a in streamed_bodies(body, end=False)
    )
    [empty] = streamed_bodies(b"", end=True, response=True)
    assert empty.response_body.response.body_mutation.streamed_response.end_of_stream


def _headers(end_of_stream: bool = False, **headers: str) -> list[Any]:
    return [base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in headers.items()]


def headers_msg(
    *,
    duplex: bool = True,
    end_of_stream: bool = False,
    subset: object = None,
    **headers: str,
) -> Any:
    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(headers=_headers(**headers)), end_of_stream=end_of_stream
        )
    )
    if duplex:
        msg.protocol_config.request_body_mode = MODE.FULL_DUPLEX_STREAMED
        msg.protocol_config.response_body_mode = MODE.FULL_DUPLEX_STREAMED
    if subset is not None:
        hint = struct_pb2.Struct()
        hint.update({"x-gateway-destination-endpoint-subset": subset})
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
    return msg


def body_msg(data: bytes, end: bool) -> Any:
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=data, end_of_stream=end))


def response_headers_msg(status: int, content_type: str = "application/json", served: str = "") -> Any:
    headers = [
        base_pb2.HeaderValue(key=":status", raw_value=str(status).encode()),
        base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode()),
    ]
    msg = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=base_pb2.HeaderMap(headers=headers)))
    if served:
        lb = struct_pb2.Struct()
        lb.update({"x-gateway-destination-endpoint-served": served})
        msg.metadata_context.filter_metadata["envoy.lb"].CopyFrom(lb)
    return msg


def response_body_msg(data: bytes, end: bool) -> Any:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=end))


def set_headers(answer: Any) -> dict[str, str]:
    common = answer.request_headers.response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def destination(answer: Any) -> str:
    return str(
        answer.dynamic_metadata.fields["envoy.lb"]
        .struct_value.fields["x-gateway-destination-endpoint"]
        .string_value
    )


def streamed(answers: list[Any]) -> tuple[bytes, list[bool]]:
    parts = [a.request_body.response.body_mutation.streamed_response for a in answers]
    return b"".join(p.body for p in parts), [p.end_of_stream for p in parts]


def in_flight(runtime: Runtime) -> int:
    return sum(len(live.in_flight) for live in runtime.registry.live.values())


def run(body: Callable[[Runtime, Any], Awaitable[None]], read_body: bool = True) -> None:
    async def main() -> None:
        runtime = Runtime(load_config_text(CONFIG.format(read_body=str(read_body).lower())))
        port = await runtime.start(ServeOptions(listen="127.0.0.1:0"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await body(runtime, pb_grpc.ExternalProcessorStub(channel))
        finally:
            await runtime.stop(drain_seconds=0, grace_seconds=1)

    asyncio.run(main())


async def read_n(call: Any, n: int) -> list[Any]:
    return [await asyncio.wait_for(call.read(), 5) for _ in range(n)]


def test_the_headers_answer_waits_for_the_body_then_the_body_streams_back_unchanged() -> None:
    document = {"model": "m", "messages": [{"role": "user", "content": "x" * 150_000}]}
    raw = json.dumps(document).encode()

    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(x_request_id="d1", content_type="application/json"))
        reader = asyncio.ensure_future(call.read())
        pieces_in = (raw[:10_000], raw[10_000:70_000], raw[70_000:])
        for i, piece in enumerate(pieces_in):
            # a negative: nothing to wait on, so a short real pause lets a wrong early answer arrive
            await asyncio.sleep(0.05)
            assert not reader.done()  # no answer while the body arrives
            await call.write(body_msg(piece, end=i == len(pieces_in) - 1))
        first = await asyncio.wait_for(reader, 5)
        assert first.HasField("request_headers") and first.request_headers.response.clear_route_cache
        values = set_headers(first)
        assert values["x-nexus-backend"] == "a"
        # the routed endpoint, then the alternates in the Route's order; the hostname backend
        # (priority 0, which would win without the gateway) is no endpoint at all
        assert values["x-gateway-destination-endpoint"] == "10.0.0.1:8000,10.0.0.2:8000,10.0.0.3:8000"
        assert destination(first) == values["x-gateway-destination-endpoint"]
        assert "content-length" not in values
        pieces = await read_n(call, 3)  # 160 KB in pieces of at most 62 000 bytes
        data, ends = streamed(pieces)
        assert data == raw and ends == [False, False, True]
        assert in_flight(runtime) == 1
        await call.write(response_headers_msg(200))
        assert (await call.read()).HasField("response_headers")
        answer = json.dumps({"usage": {"prompt_tokens": 1000, "completion_tokens": 500}}).encode()
        await call.write(response_body_msg(answer[:7], end=False))
        await call.write(response_body_msg(answer[7:], end=True))
        echoed = [r.response_body.response.body_mutation.streamed_response for r in await read_n(call, 2)]
        assert b"".join(e.body for e in echoed) == answer and [e.end_of_stream for e in echoed] == [
            False,
            True,
        ]
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        assert in_flight(runtime) == 0
        # charged by the response's usage: 1000 in at 1 USD/1K + 500 out at 2 USD/1K
        spent = runtime.engine.ledger.totals(GLOBAL, month_of(time.time())).spent_nano
        assert spent == 2 * 10**9
        stats = envoy_stats(runtime.engine)
        assert (stats.duplex_streams, stats.body_chunks_sent) == (1, 3)

    run(body)


def test_an_alias_in_the_body_is_rewritten_as_the_body_streams_back() -> None:
    raw = b'{"model": "nick", "messages": []}'

    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(content_type="application/json"))
        await call.write(body_msg(raw, end=True))
        first, piece = await read_n(call, 2)
        assert set_headers(first)["x-nexus-model"] == "m"
        data, ends = streamed([piece])
        assert json.loads(data) == {"model": "m", "messages": []} and ends == [True]
        assert envoy_stats(runtime.engine).bodies_rewritten == 1
        await call.done_writing()

    run(body)


def test_trailers_end_the_body_and_no_piece_ends_the_stream() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(content_type="application/json"))
        await call.write(body_msg(b'{"model": "m"}', end=False))
        reader = asyncio.ensure_future(call.read())
        # a negative: nothing to wait on, so a short real pause lets a wrong early answer arrive
        await asyncio.sleep(0.05)
        assert not reader.done()  # the body has not ended yet
        await call.write(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
        first = await asyncio.wait_for(reader, 5)
        piece, trailers = await read_n(call, 2)
        assert set_headers(first)["x-nexus-backend"] == "a"
        assert streamed([piece]) == (b'{"model": "m"}', [False])
        assert trailers.HasField("request_trailers")
        await call.done_writing()

    run(body)


def test_a_headers_only_request_is_decided_at_once() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m"))
        first = await call.read()
        assert destination(first) == set_headers(first)["x-gateway-destination-endpoint"]
        await call.done_writing()

    run(body)


def test_without_read_body_the_headers_decide_and_every_piece_goes_back_as_it_came() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(x_nexus_model="m", content_type="text/plain"))
        first = await call.read()
        assert set_headers(first)["x-nexus-backend"] == "a"
        for data, end in ((b"one ", False), (b"two", True)):
            await call.write(body_msg(data, end))
            assert streamed([await call.read()]) == (data, [end])
        await call.done_writing()

    run(body, read_body=False)


@pytest.mark.parametrize(
    ("subset", "backend", "endpoints"),
    [
        (["10.0.0.3:8000"], "c", "10.0.0.3:8000"),
        ("10.0.0.2:8000, 10.0.0.3:8000", "b", "10.0.0.2:8000,10.0.0.3:8000"),
        (["10.0.0.3", "10.0.0.2:8000,10.0.0.1:9"], "b", "10.0.0.2:8000,10.0.0.3:8000"),
    ],
)
def test_the_subset_hint_confines_the_route_and_the_fallback_list(
    subset: object, backend: str, endpoints: str
) -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m", subset=subset))
        first = await call.read()
        values = set_headers(first)
        assert (values["x-nexus-backend"], values["x-gateway-destination-endpoint"]) == (backend, endpoints)
        assert destination(first) == endpoints
        assert envoy_stats(runtime.engine).subsets_seen == 1
        await call.done_writing()

    run(body)


@pytest.mark.parametrize("subset", [[], "", " , ", ["10.0.0.77:8000"]])
def test_an_empty_or_ineligible_subset_is_a_503(subset: object) -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m", subset=subset))
        reply = (await call.read()).immediate_response
        assert reply.status.code == 503
        error = json.loads(reply.body)
        assert error["error"]["code"] == "no_eligible_backend"
        codes = {r["code"] for r in error["context"]["rejection_reasons"]}
        assert codes == {"EXCLUSION_CODE_OUTSIDE_ENDPOINT_SUBSET"}
        assert error["context"]["available_backends"] == []
        await call.done_writing()
        assert in_flight(runtime) == 0

    run(body)


@pytest.mark.parametrize("subset", [["gpu-1:8000"], [5], {"a": 1}, "10.0.0.1:99999"])
def test_a_subset_that_is_not_a_list_of_endpoints_is_a_503_naming_it(subset: object) -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m", subset=subset))
        reply = (await call.read()).immediate_response
        assert reply.status.code == 503
        error = json.loads(reply.body)["error"]
        assert error["code"] == "invalid_endpoint_subset"
        assert error["param"] == "envoy.lb.subset_hint/x-gateway-destination-endpoint-subset"
        await call.done_writing()

    run(body)


def test_buffered_mode_is_unchanged_without_protocol_config() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(duplex=False, content_type="application/json"))
        asked = await call.read()
        assert asked.mode_override.request_body_mode == MODE.BUFFERED
        await call.write(body_msg(b'{"model": "m"}', end=True))
        answer = await call.read()
        common = answer.request_body.response
        values = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
        # not an endpoint-picking gateway: the hostname backend routes by its id, as before
        assert values["x-nexus-backend"] == "cloud" and "x-gateway-destination-endpoint" not in values
        assert "envoy.lb" not in answer.dynamic_metadata.fields
        assert envoy_stats(runtime.engine).duplex_streams == 0
        await call.done_writing()

    run(body)


@pytest.mark.parametrize(
    ("served", "backend"), [("10.0.0.2:8000", "b"), ("10.0.0.9:1", "a"), ("not an endpoint", "a"), ("", "a")]
)
def test_the_served_endpoint_names_the_backend_the_outcome_belongs_to(served: str, backend: str) -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m"))
        assert set_headers(await call.read())["x-nexus-backend"] == "a"
        await call.write(response_headers_msg(200, served=served))
        await call.read()
        await call.write(response_body_msg(b"{}", end=True))
        await call.read()
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        now = runtime.engine.clock()
        counted = {bid: live.stats.snapshot(now)[0] for bid, live in runtime.registry.live.items()}
        assert counted[backend] == 1 and sum(counted.values()) == 1
        stats = envoy_stats(runtime.engine)
        assert stats.served_elsewhere == (backend == "b")
        assert stats.served_unknown == (served == "10.0.0.9:1")
        assert in_flight(runtime) == 0

    run(body)


def test_a_stream_usage_is_read_from_its_last_event() -> None:
    events = (
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":2000,"completion_tokens":1000}}\n\n'
        b"data: [DONE]\n\n"
    )

    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m"))
        await call.read()
        await call.write(response_headers_msg(200, "text/event-stream"))
        await call.read()
        for i in range(0, len(events), 40):
            await call.write(response_body_msg(events[i : i + 40], end=False))
            await call.read()
        await call.write(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
        assert (await call.read()).HasField("response_trailers")
        await call.done_writing()
        spent = runtime.engine.ledger.totals(GLOBAL, month_of(time.time())).spent_nano
        assert spent == 4 * 10**9  # 2000 in at 1 USD/1K + 1000 out at 2 USD/1K

    run(body)


def test_a_body_above_the_limit_is_a_413() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        limit = runtime.config.limits.max_message_bytes
        call = stub.Process()
        await call.write(headers_msg(content_type="application/json"))
        piece = b" " * 1_000_000
        for _ in range(limit // len(piece)):
            await call.write(body_msg(piece, end=False))
        await call.write(body_msg(piece, end=False))
        reply = (await asyncio.wait_for(call.read(), 5)).immediate_response
        assert reply.status.code == 413 and json.loads(reply.body)["error"]["code"] == "body_too_large"
        await call.done_writing()
        assert in_flight(runtime) == 0

    run(body)


def test_a_response_cut_off_after_its_headers_keeps_the_status_and_frees_the_slot() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=True, x_nexus_model="m"))
        await call.read()
        await call.write(response_headers_msg(200))
        await call.read()
        call.cancel()  # the client went away mid-response
        await async_wait_until(lambda: in_flight(runtime) == 0, "the cancelled stream frees its slot")
        now = runtime.engine.clock()
        assert runtime.registry.live["a"].stats.snapshot(now)[:2] == (1, 0)  # one outcome, no failure

    run(body)
