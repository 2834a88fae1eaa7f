"""Active health checks over HTTP: the probe client's body framings and limits, the verdicts of
a probe (200, 401/403, 500, a time-out, garbage, a refused connection) and probe rounds, against a
scripted asyncio server on a free loopback port (same loop)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from support.net import async_wait_until
from support.probes import HC, H, K, U, registry, status

from nexus_grpc.config.schema import HealthCheckConfig
from nexus_grpc.domain.backend import probe_path
from nexus_grpc.state.health import HealthProber, ProbeResult
from nexus_grpc.state.probe_http import http_get
from nexus_grpc.state.registry import Registry
from nexus_grpc.testing.builders import backend, model

# ---- a scripted HTTP server ----------------------------------------------------------------


@dataclass
class Script:
    """What the server answers: raw bytes, or a coroutine that writes them (to hang, etc.)."""

    answer: bytes | Callable[[asyncio.StreamWriter], Awaitable[None]] = b""
    requests: list[bytes] = field(default_factory=list)


def http(status: int, body: bytes = b"", *, chunked: bool = False, length: bool = True) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    if chunked:
        mid = len(body) // 2
        parts = [body[:mid], body[mid:]]
        payload = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts if p) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + payload
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
        script.requests.append(data)
        try:
            if isinstance(script.answer, bytes):
                writer.write(script.answer)
                await writer.drain()
            else:
                await script.answer(writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, int(port)


def run(coro: Awaitable[Any]) -> Any:
    async def wrapped() -> Any:
        return await coro

    return asyncio.run(wrapped())


@pytest.fixture
def script() -> Iterator[Script]:
    yield Script()


def no_ssl() -> Any:
    raise AssertionError("http:// needs no SSL context")


@pytest.mark.parametrize(
    "answer",
    [
        http(200, b'{"models": [{"name": "a"}]}'),
        http(200, b'{"models": [{"name": "a"}]}', chunked=True),
        http(200, b'{"models": [{"name": "a"}]}', length=False),
    ],
    ids=["content-length", "chunked", "until-close"],
)
def test_http_get_reads_every_body_framing(script: Script, answer: bytes) -> None:
    async def body() -> None:
        script.answer = answer
        server, port = await serve(script)
        async with server:
            got = await http_get(f"http://127.0.0.1:{port}/api/tags", [("X-Key", "v")], no_ssl)
        assert got.status == 200
        assert got.body == b'{"models": [{"name": "a"}]}'
        request = script.requests[0].decode()
        assert request.startswith("GET /api/tags HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{port}\r\n" in request
        assert "X-Key: v\r\n" in request

    run(body())


def test_http_get_skips_long_and_non_200_bodies(script: Script) -> None:
    async def body() -> None:
        server, port = await serve(script)
        async with server:
            script.answer = http(200, b"x" * 100)
            assert (await http_get(f"http://127.0.0.1:{port}/", [], no_ssl, max_body=10)).body is None
            script.answer = http(200, b"x" * 100, chunked=True)
            assert (await http_get(f"http://127.0.0.1:{port}/", [], no_ssl, max_body=10)).body is None
            script.answer = http(500, b"oops")
            got = await http_get(f"http://127.0.0.1:{port}/base/", [], no_ssl)
            assert (got.status, got.body) == (500, None)

    run(body())


# ---- probing: verdicts -------------------------------------------------------------------


def probe_once(script: Script, *, hc: HealthCheckConfig = HC, **kw: Any) -> tuple[Registry, ProbeResult]:
    async def body() -> tuple[Registry, ProbeResult]:
        server, port = await serve(script)
        async with server:
            b = backend("b", url=f"http://127.0.0.1:{port}", **kw)
            reg = registry(b, hc=hc)
            prober = HealthProber(reg)
            path = probe_path(b)
            assert path is not None
            result = await prober.probe(b, path, hc.timeout_seconds)
            found = reg.get("b")
            assert found is not None
            prober.apply("b", found[1], result, hc)
            return reg, result

    result: tuple[Registry, ProbeResult] = run(body())
    return result


def test_a_200_is_healthy_and_lists_models(script: Script) -> None:
    script.answer = http(200, json.dumps({"models": [{"name": "m"}, {"name": "extra:7b"}]}).encode())
    reg, result = probe_once(script, models=(model("m", context_length=4096, tools=True),))
    assert (result.reachable, result.detail) == (True, "HTTP 200")
    assert result.models == ("extra:7b", "m")
    assert status(reg, "b") == H
    assert script.requests[0].startswith(b"GET /api/tags ")
    found = reg.get("b")
    assert found is not None
    cfg, live = found
    # the declaration wins; the discovered one has unlimited context and no capabilities
    assert [(m.id, m.context_length, m.tools) for m in cfg.models] == [
        ("m", 4096, True),
        ("extra:7b", None, False),
    ]
    assert [c.id for c in reg.fleet.candidates["extra:7b"]] == ["b"]
    assert live.latency_ema_ms == result.latency_ms > 0


@pytest.mark.parametrize("code", [401, 403])
def test_401_and_403_count_as_reachable(script: Script, code: int) -> None:
    script.answer = http(code, b'{"error": "unauthorised"}')
    reg, result = probe_once(script, type="vllm")
    assert result.reachable
    assert status(reg, "b") == H
    assert script.requests[0].startswith(b"GET /v1/models ")


def test_a_500_is_a_failure_and_unknown_takes_the_first_verdict(script: Script) -> None:
    script.answer = http(500, b"")
    reg, result = probe_once(script, type="llamacpp")
    assert (result.reachable, result.detail) == (False, "HTTP 500")
    assert status(reg, "b") == U
    found = reg.get("b")
    assert found is not None
    assert found[1].reason == "health probe: HTTP 500"
    assert found[1].latency_ema_ms == 0.0  # failures do not feed the EMA
    assert script.requests[0].startswith(b"GET /health ")


def test_a_probe_that_outlasts_the_timeout_fails(script: Script) -> None:
    async def hang(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # the stand-in backend is slow on purpose: longer than the timeout

    script.answer = hang
    hc = replace(HC, timeout_seconds=0.1)
    reg, result = probe_once(script, hc=hc, health_path="/slow")
    assert not result.reachable
    assert "timed out after 0.1 s" in result.detail
    assert status(reg, "b") == U


def test_garbage_and_refused_connections_fail(script: Script) -> None:
    script.answer = b"SSH-2.0-OpenSSH\r\n"
    reg, result = probe_once(script)
    assert (result.reachable, status(reg, "b")) == (False, U)

    async def refused() -> ProbeResult:
        server, port = await serve(Script())
        server.close()
        await server.wait_closed()
        b = backend("b", url=f"http://127.0.0.1:{port}")
        return await HealthProber(registry(b)).probe(b, "/api/tags", 1.0)

    result = run(refused())
    assert (result.reachable, result.detail) == (False, "connection refused")


# ---- rounds --------------------------------------------------------------------------------


def test_rounds_probe_every_probed_backend_and_new_ones_at_once(script: Script) -> None:
    async def body() -> None:
        script.answer = http(200, b'{"data": [{"id": "m"}]}')
        server, port = await serve(script)
        url = f"http://127.0.0.1:{port}"
        async with server:
            reg = registry(backend("a", url=url, type="vllm"), backend("cloud", type="openai"))
            prober = HealthProber(reg)
            await prober.probe_round()
            assert (status(reg, "a"), status(reg, "cloud"), prober.rounds) == (H, H, 1)
            assert len(script.requests) == 1  # the cloud backend is not probed
            await prober.probe_round(only_new=True)
            assert len(script.requests) == 1  # nothing new
            reg.upsert(backend("new", url=url, type="vllm"))
            assert status(reg, "new") == K
            await prober.probe_round(only_new=True)
            assert (status(reg, "new"), len(script.requests), prober.rounds) == (H, 2, 1)

    run(body())


def test_run_sets_first_round_then_releases_when_disabled(script: Script) -> None:
    async def body() -> None:
        script.answer = http(503, b"")
        server, port = await serve(script)
        async with server:
            reg = registry(backend("a", url=f"http://127.0.0.1:{port}"))
            prober = HealthProber(reg)
            task = asyncio.create_task(prober.run())
            try:
                await asyncio.wait_for(prober.first_round.wait(), 5)
                assert status(reg, "a") == U
                reg.load(replace(reg.config, health_check=HealthCheckConfig(enabled=False)))
                # health checks off: nothing stays probe-UNHEALTHY
                await async_wait_until(lambda: status(reg, "a") == H, "the backend released to HEALTHY")
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    run(body())
