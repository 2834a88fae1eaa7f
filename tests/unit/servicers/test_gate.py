"""The gate in front of every RPC, driven with a fake servicer context (no server): refusals,
tokens, budgets, and malformed messages answered without a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc.servicers.gate import Gate, Malformed, MalformedLog
from nexus_grpc.state.server import ServerState
from nexus_grpc.testing.clock import FakeClock


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def echo(request: Any, context: Any) -> Any:
    return request


def unary(gate: Gate, method: str = "/nexus.v1.DecisionService/Decide") -> Any:
    handler = grpc.unary_unary_rpc_method_handler(
        echo, request_deserializer=dpb.DecideRequest.FromString, response_serializer=lambda m: b""
    )
    return gate.wrap(method, handler)


def call(handler: Any, data: bytes, context: FakeContext | None = None) -> Any:
    request = handler.request_deserializer(data)
    return asyncio.run(handler.unary_unary(request, context or FakeContext()))


def ready(**kw: Any) -> ServerState:
    state = ServerState(**kw)
    state.ready = True
    return state


def test_malformed_bytes_never_reach_the_servicer() -> None:
    handler = unary(Gate(ready()))
    assert isinstance(handler.request_deserializer(b"\xff\xff"), Malformed)
    with pytest.raises(Aborted) as info:
        call(handler, b"\xff\xff")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details == "malformed request: not a valid protobuf message (DecodeError)"
    assert call(handler, dpb.DecideRequest(model="m").SerializeToString()).model == "m"


def test_malformed_requests_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    malformed = MalformedLog(interval=10.0, clock=clock)
    for _ in range(50):
        malformed("/x", "bad")
    clock.advance(10.0)
    malformed("/x", "bad")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("refused 1 malformed")
    assert messages[1].startswith("refused 50 malformed")
    assert malformed.count == 51


@pytest.mark.parametrize(
    ("state", "method", "metadata", "code"),
    [
        (ServerState(), "/nexus.v1.DecisionService/Decide", (), grpc.StatusCode.UNAVAILABLE),  # not ready
        (
            ready(listen="0.0.0.0:1"),
            "/nexus.v1.AdminService/ReloadConfig",
            (),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            ready(admin_token_env="GATE_TEST_TOKEN"),
            "/nexus.v1.AdminService/ReloadConfig",
            (("authorization", "Bearer wrong"),),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        (
            ready(client_token_env="GATE_TEST_TOKEN"),
            "/nexus.v1.DecisionService/Decide",
            (),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
    ],
)
def test_refusals(
    state: ServerState,
    method: str,
    metadata: tuple[tuple[str, str], ...],
    code: grpc.StatusCode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATE_TEST_TOKEN", "right")
    with pytest.raises(Aborted) as info:
        call(unary(Gate(state), method), b"", FakeContext(metadata))
    assert info.value.code == code


def test_the_right_token_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATE_TEST_TOKEN", "right")
    state = ready(admin_token_env="GATE_TEST_TOKEN", listen="0.0.0.0:1")
    handler = unary(Gate(state), "/nexus.v1.AdminService/ReloadConfig")
    assert call(handler, b"", FakeContext((("authorization", "Bearer right"),))) is not None


def test_unary_budget_counts_calls_in_progress() -> None:
    state = ready(max_unary=1)
    handler = unary(Gate(state))
    state.unary_active = 1  # another call is in progress
    with pytest.raises(Aborted) as info:
        call(handler, b"")
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    state.unary_active = 0
    call(handler, b"")
    assert state.unary_active == 0  # counted and released


def test_a_refusing_server_answers_unavailable_to_everything() -> None:
    state = ready()
    state.refusing = True
    with pytest.raises(Aborted) as info:
        call(unary(Gate(state), "/nexus.v1.AdminService/GetServerInfo"), b"")
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
