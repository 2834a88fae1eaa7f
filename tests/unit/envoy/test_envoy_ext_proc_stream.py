"""The ext_proc servicer over a real grpc.aio channel, driven by scripted Envoy messages (no Envoy):
the hold wakes HIGH priority first, a cancelled stream frees its slot, a bug fails closed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from nexus_grpc.app import Runtime, ServeOptions
from nexus_grpc.config.loader import load_config_text
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


def run(body: Callable[[Runtime, Any], Awaitable[None]], config: str = CONFIG) -> None:
    async def main() -> None:
        runtime = Runtime(load_config_text(config))
        port = await runtime.start(ServeOptions(listen="127.0.0.1:0"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await body(runtime, pb_grpc.ExternalProcessorStub(channel))
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
        await asyncio.sleep(0.1)
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
        for _ in range(100):
            if in_flight(runtime) == 0:
                break
            await asyncio.sleep(0.02)
        assert in_flight(runtime) == 0
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
        await asyncio.sleep(0.1)
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
