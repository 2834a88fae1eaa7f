"""The ext_proc (and ext_authz) servicers over a real grpc.aio channel, driven by scripted Envoy
messages (no Envoy): the hold wakes HIGH priority first, a cancelled stream frees its slot, a bug
fails closed, and errors raised while deciding are a JSON answer (503 when the ledger cannot
store a reservation, 429 when shedding load)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from support.net import async_wait_until

from nexus_grpc.app import Runtime, ServeOptions
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.errors import LedgerError, Overloaded
from nexus_grpc.servicers.envoy import envoy_stats

CONFIG = """
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
[ledger]
kind = "memory"
[queue]
max_wait_ms = 5000
[[backends]]
id = "solo"
url = "http://127.0.0.1:9"
type = "ollama"
max_concurrency = 1
[[backends.models]]
id = "m"
"""


def headers_msg(end_of_stream: bool = True, **headers: str) -> Any:
    hmap = base_pb2.HeaderMap(
        headers=[
            base_pb2.HeaderValue(key=k.replace("_", "-"), raw_value=v.encode()) for k, v in headers.items()
        ]
    )
    return pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hmap, end_of_stream=end_of_stream))


def response_headers_msg(status: int) -> Any:
    hmap = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=str(status).encode())])
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=hmap, end_of_stream=True))


def mutations(response: Any) -> dict[str, str]:
    common = response.request_headers.response
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def run(
    body: Callable[[Runtime, Any], Awaitable[None]],
    config: str = CONFIG,
    stub: Any = pb_grpc.ExternalProcessorStub,
) -> None:
    async def main() -> None:
        runtime = Runtime(load_config_text(config))
        port = await runtime.start(ServeOptions(listen="127.0.0.1:0"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await body(runtime, stub(channel))
        finally:
            await runtime.stop(drain_seconds=0, grace_seconds=1)

    asyncio.run(main())


def in_flight(runtime: Runtime) -> int:
    return sum(len(live.in_flight) for live in runtime.registry.live.values())


def test_route_then_response_reports_the_outcome() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(x_nexus_model="m", x_request_id="r1"))
        routed = await call.read()
        assert routed.request_headers.response.clear_route_cache
        values = mutations(routed)
        assert values["x-nexus-backend"] == "solo"
        assert values["x-gateway-destination-endpoint"] == "127.0.0.1:9"
        assert in_flight(runtime) == 1
        await call.write(response_headers_msg(200))
        answered = await call.read()
        assert answered.HasField("response_headers")
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        assert in_flight(runtime) == 0
        assert runtime.registry.live["solo"].stats.snapshot(runtime.engine.clock())[:2] == (1, 0)

    run(body)


def test_held_streams_wake_high_priority_first() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        first = stub.Process()
        await first.write(headers_msg(x_nexus_model="m", x_request_id="first"))
        assert (await first.read()).HasField("request_headers")  # took the only slot
        normal, high = stub.Process(), stub.Process()
        await normal.write(headers_msg(x_nexus_model="m", x_request_id="normal"))
        hold = await normal.read()
        assert hold.override_message_timeout.ToMilliseconds() == 5000 + 2000
        await high.write(headers_msg(x_nexus_model="m", x_request_id="high", x_nexus_priority="high"))
        assert (await high.read()).HasField("override_message_timeout")
        await first.write(response_headers_msg(200))  # frees the slot: an event
        await first.read()
        routed = await asyncio.wait_for(high.read(), 5)
        assert mutations(routed)["x-nexus-request-id"] == "high"
        assert envoy_stats(runtime.engine).holds == 2
        await high.write(response_headers_msg(200))
        await high.read()
        routed = await asyncio.wait_for(normal.read(), 5)
        assert mutations(routed)["x-nexus-request-id"] == "normal"
        await normal.write(response_headers_msg(200))
        await normal.read()
        for call in (first, normal, high):
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
        assert in_flight(runtime) == 0

    run(body)


def test_cancelled_stream_reports_a_failure_and_frees_the_slot() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(x_nexus_model="m"))
        await call.read()
        assert in_flight(runtime) == 1
        call.cancel()
        await async_wait_until(lambda: in_flight(runtime) == 0, "the cancelled stream frees its slot")
        assert envoy_stats(runtime.engine).closed_without_response == 1
        assert runtime.registry.live["solo"].stats.snapshot(runtime.engine.clock())[:2] == (1, 1)

    run(body)


def test_a_held_stream_that_is_cancelled_leaves_nothing_behind() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        first = stub.Process()
        await first.write(headers_msg(x_nexus_model="m"))
        await first.read()
        held = stub.Process()
        await held.write(headers_msg(x_nexus_model="m"))
        assert (await held.read()).HasField("override_message_timeout")
        held.cancel()
        await async_wait_until(
            lambda: runtime.state.streams_active == 1, "the server sees the cancellation and ends the hold"
        )
        await first.write(response_headers_msg(200))
        await first.read()
        await first.done_writing()
        assert in_flight(runtime) == 0
        assert envoy_stats(runtime.engine).closed_without_response == 0

    run(body)


def test_a_bug_fails_closed_with_a_500_and_no_traceback() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

        runtime.engine.decide = broken  # type: ignore[method-assign]
        call = stub.Process()
        await call.write(headers_msg(x_nexus_model="m", x_request_id="bug-1"))
        reply = (await call.read()).immediate_response
        assert reply.status.code == 500
        assert b"bug-1" in reply.body and b"boom" not in reply.body and b"Traceback" not in reply.body
        await call.done_writing()

    run(body)


PRICED = """
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
[ledger]
kind = "memory"
[pricing.default]
input_per_1k = 0.001
output_per_1k = 0.002
[[backends]]
id = "cloud"
url = "https://api.example.com"
type = "openai"
[[backends.models]]
id = "m"
"""


def _refusing_ledger(runtime: Runtime) -> None:
    async def refuse(*args: object, **kwargs: object) -> bool:
        raise LedgerError("the budget ledger cannot store changes (disk full)")

    runtime.engine.ledger.reserve = refuse  # type: ignore[method-assign]
    runtime.engine.ledger.settle = refuse  # type: ignore[method-assign,assignment]


def test_a_ledger_that_cannot_store_the_reservation_is_a_503_json_answer() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        _refusing_ledger(runtime)
        call = stub.Process()
        await call.write(headers_msg(x_nexus_model="m", x_request_id="led-1", x_nexus_estimated_tokens="100"))
        reply = (await call.read()).immediate_response
        assert reply.status.code == 503
        headers = {h.header.key: h.header.raw_value.decode() for h in reply.headers.set_headers}
        assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
        error = json.loads(reply.body)["error"]
        assert (error["code"], error["type"]) == ("ledger_unavailable", "service_unavailable")
        assert "disk full" in error["message"] and "led-1" in error["message"]
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
        assert in_flight(runtime) == 0  # nothing held for the failed decision

    run(body, PRICED)


def test_overload_while_deciding_is_a_429_json_answer() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        async def shed(*args: object, **kwargs: object) -> None:
            raise Overloaded("server near max_concurrent_rpcs: shedding normal-priority decisions")

        runtime.engine.decide = shed  # type: ignore[method-assign]
        call = stub.Process()
        await call.write(headers_msg(x_nexus_model="m", x_request_id="ovl-1"))
        reply = (await call.read()).immediate_response
        assert reply.status.code == 429  # shed: what endpoint-picking gateways expect
        assert json.loads(reply.body)["error"]["code"] == "overloaded"
        await call.done_writing()

    run(body)


def test_ext_authz_answers_a_ledger_that_cannot_store_the_charge_with_a_503() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        _refusing_ledger(runtime)
        check = auth_pb.CheckRequest()
        check.attributes.request.http.headers.update(
            {"x-nexus-model": "m", "x-request-id": "led-2", "x-nexus-estimated-tokens": "100"}
        )
        response = await stub.Check(check)
        assert response.denied_response.status.code == 503
        error = json.loads(response.denied_response.body)["error"]
        assert error["code"] == "ledger_unavailable" and "led-2" in error["message"]
        assert len(runtime.engine.flights) == 0  # the decision whose charge failed is not kept

    run(body, PRICED, auth_grpc.AuthorizationStub)


def test_without_read_body_headers_decide_and_the_body_streams_unread() -> None:
    # the shipped config buffers request bodies from the start; a Route at the headers turns that
    # off for this request, so the body is never sent to nexus-grpc
    async def body(runtime: Runtime, stub: Any) -> None:
        call = stub.Process()
        await call.write(headers_msg(end_of_stream=False, x_nexus_model="m", content_type="text/plain"))
        routed = await call.read()
        assert mutations(routed)["x-nexus-backend"] == "solo"
        assert routed.HasField("mode_override")
        assert routed.mode_override.request_body_mode == processing_mode_pb2.ProcessingMode.NONE
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK

    run(body)


def test_with_read_body_the_decision_waits_for_the_body_of_any_content_type() -> None:
    async def body(runtime: Runtime, stub: Any) -> None:
        for content_type, payload, status in [
            ("application/json", b'{"model": "m"}', None),
            ("text/plain", b"plain text", None),
            ("text/plain", b'{"model": "other"}', 400),  # a JSON object naming another model
        ]:
            call = stub.Process()
            await call.write(headers_msg(end_of_stream=False, x_nexus_model="m", content_type=content_type))
            asked = await call.read()
            assert not asked.request_headers.response.header_mutation.set_headers  # not decided yet
            assert asked.mode_override.request_body_mode == processing_mode_pb2.ProcessingMode.BUFFERED
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(body=payload, end_of_stream=True)))
            answer = await call.read()
            if status is None:
                common = answer.request_body.response
                assert {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers}[
                    "x-nexus-backend"
                ] == b"solo"
                await call.write(response_headers_msg(200))
                await call.read()
            else:
                assert answer.immediate_response.status.code == status
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
        assert in_flight(runtime) == 0

    run(body, CONFIG.replace("[queue]", "[envoy]\nread_body = true\n[queue]"))
