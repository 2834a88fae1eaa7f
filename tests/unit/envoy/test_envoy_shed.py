"""Shed requests get the endpoint-picker protocol's HTTP 429 (the JSON error body, `retry-after`),
never a gRPC error Envoy would turn into its `status_on_error`: an ext_proc stream over
`[server] max_concurrent_streams` and an ext_authz Check over `max_concurrent_rpcs` are answered
by the gate without deciding; near those budgets normal-priority decisions are shed and HIGH
ones pass. Over a real grpc.aio channel with scripted Envoy messages (no Envoy)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from nexus_grpc.app import Runtime, ServeOptions
from nexus_grpc.config.loader import load_config_text
from nexus_grpc.servicers import gate
from nexus_grpc.servicers.envoy import envoy_stats

CONFIG = """
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
{server}
[ledger]
kind = "memory"
[[backends]]
id = "solo"
url = "http://127.0.0.1:9"
type = "ollama"
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


def reply_headers(mutation: Any) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


def count_decisions(runtime: Runtime) -> list[int]:
    """[decisions made from now on], counted as the engine's decide is called."""
    count = [0]
    decide = runtime.engine.decide

    async def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await decide(*args, **kwargs)

    runtime.engine.decide = counted  # type: ignore[method-assign]
    return count


def run(body: Callable[[Runtime, grpc.aio.Channel], Awaitable[None]], server: str) -> None:
    async def main() -> None:
        runtime = Runtime(load_config_text(CONFIG.format(server=server)))
        port = await runtime.start(ServeOptions(listen="127.0.0.1:0"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await body(runtime, channel)
        finally:
            await runtime.stop(drain_seconds=0, grace_seconds=1)

    asyncio.run(main())


async def routed_stream(stub: Any, **headers: str) -> Any:
    """An ext_proc stream whose headers were routed and that stays open (its response pending)."""
    call = stub.Process()
    await call.write(headers_msg(x_nexus_model="m", **headers))
    assert (await call.read()).HasField("request_headers")
    return call


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def assert_shed_429(reply: Any, request_id: str, detail: str) -> None:
    assert reply.status.code == 429
    headers = reply_headers(reply.headers)
    assert headers == {
        "content-type": "application/json",
        "retry-after": "1",
        "x-nexus-request-id": request_id,
    }
    error = json.loads(reply.body)["error"]
    assert error["code"] == "overloaded" and error["type"] == "rate_limit_error"
    assert detail in error["message"] and request_id in error["message"]
    assert reply.details == "nexus_overloaded"


def test_a_stream_over_max_concurrent_streams_is_answered_429_without_deciding() -> None:
    async def body(runtime: Runtime, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.ExternalProcessorStub(channel)
        held = await routed_stream(stub, x_request_id="held")
        await wait_for(lambda: runtime.state.streams_active == 1)
        decisions = count_decisions(runtime)
        extra = stub.Process()
        await extra.write(headers_msg(x_nexus_model="m", x_request_id="shed-1"))
        reply = await extra.read()
        assert_shed_429(reply.immediate_response, "shed-1", "server at max_concurrent_streams (1 streams")
        assert await extra.read() == grpc.aio.EOF  # the gate ended the stream
        assert await extra.code() == grpc.StatusCode.OK
        assert decisions == [0]  # no decision was made for it
        stats = envoy_stats(runtime.engine)
        assert stats.shed == 1
        assert (runtime.state.streams_active, runtime.state.streams_shedding) == (1, 0)
        await held.done_writing()
        held.cancel()
        await wait_for(lambda: runtime.state.streams_active == 0)
        # within budget again: decided as usual
        again = await routed_stream(stub, x_request_id="after")
        assert decisions == [1]
        again.cancel()

    run(body, "max_concurrent_streams = 1")


def test_a_stream_over_budget_that_sends_nothing_is_refused_with_resource_exhausted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gate, "SHED_FIRST_MESSAGE_S", 0.2)

    async def body(runtime: Runtime, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.ExternalProcessorStub(channel)
        held = await routed_stream(stub)
        closed = stub.Process()
        await closed.done_writing()  # no first message: nothing to answer
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await closed.read()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_streams" in (info.value.details() or "")
        silent = stub.Process()  # opened, never writes: refused once the wait is over
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(silent.read(), 5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert envoy_stats(runtime.engine).shed == 0
        assert runtime.state.streams_shedding == 0
        held.cancel()

    run(body, "max_concurrent_streams = 1")


def test_near_max_concurrent_streams_normal_priority_is_shed_and_high_passes() -> None:
    """A budget of 3 streams sheds above 2 (90 %): with two held, a third normal-priority one is
    a 429 from the decision, a HIGH one is routed."""

    async def body(runtime: Runtime, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.ExternalProcessorStub(channel)
        held = [await routed_stream(stub), await routed_stream(stub)]
        normal = stub.Process()
        await normal.write(headers_msg(x_nexus_model="m", x_request_id="n-1"))
        reply = (await normal.read()).immediate_response
        assert_shed_429(reply, "n-1", "server near max_concurrent_streams: shedding normal-priority")
        await normal.done_writing()
        await wait_for(lambda: runtime.state.streams_active == 2)
        high = await routed_stream(stub, x_nexus_priority="high")
        assert envoy_stats(runtime.engine).shed == 1
        for call in (*held, high):
            call.cancel()

    run(body, "max_concurrent_streams = 3")


def _check(request_id: str, **headers: str) -> Any:
    check = auth_pb.CheckRequest()
    check.attributes.request.http.headers.update(
        {"x-nexus-model": "m", "x-request-id": request_id, **headers}
    )
    return check


def assert_denied_429(response: Any, request_id: str, detail: str) -> None:
    denied = response.denied_response
    assert denied.status.code == 429
    assert {h.header.key: h.header.value for h in denied.headers} == {
        "content-type": "application/json",
        "retry-after": "1",
        "x-nexus-request-id": request_id,
    }
    error = json.loads(denied.body)["error"]
    assert error["code"] == "overloaded" and detail in error["message"]


def test_a_check_over_max_concurrent_rpcs_is_a_denied_429_without_deciding() -> None:
    async def body(runtime: Runtime, channel: grpc.aio.Channel) -> None:
        stub = auth_grpc.AuthorizationStub(channel)
        decisions = count_decisions(runtime)
        runtime.state.unary_active = 1  # another unary RPC in progress
        try:
            response = await stub.Check(_check("c-1"))
        finally:
            runtime.state.unary_active = 0
        assert_denied_429(response, "c-1", "server at max_concurrent_rpcs (1 unary RPCs")
        assert decisions == [0]
        assert envoy_stats(runtime.engine).shed == 1
        assert (await stub.Check(_check("c-2"))).HasField("ok_response")

    run(body, "max_concurrent_rpcs = 1")


def test_near_max_concurrent_rpcs_a_normal_check_is_shed_and_high_passes() -> None:
    async def body(runtime: Runtime, channel: grpc.aio.Channel) -> None:
        stub = auth_grpc.AuthorizationStub(channel)
        runtime.state.unary_active = 3  # the Check makes 4, above 90 % of 4 (3)
        try:
            normal = await stub.Check(_check("c-n"))
            high = await stub.Check(_check("c-h", **{"x-nexus-priority": "high"}))
        finally:
            runtime.state.unary_active = 0
        assert_denied_429(normal, "c-n", "server near max_concurrent_rpcs: shedding normal-priority")
        assert high.HasField("ok_response")
        assert envoy_stats(runtime.engine).shed == 1

    run(body, "max_concurrent_rpcs = 4")
