"""The first endpoint-picking stream of a configuration logs, once, every backend such a gateway
can never be sent to (a URL whose host is a name), naming it and its key; other streams log
nothing. Over a real grpc.aio channel with scripted Envoy messages (no Envoy)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from nexus_grpc.app import Runtime, ServeOptions
from nexus_grpc.config.loader import load_config_text

CONFIG = """
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
[ledger]
kind = "memory"
[[backends]]
id = "gpu-1"
url = "http://127.0.0.1:9"
type = "vllm"
[[backends.models]]
id = "m"
[[backends]]
id = "cloud"
url = "http://localhost:9"
type = "openai"
[[backends.models]]
id = "m"
"""
FULL_DUPLEX = processing_mode_pb2.ProcessingMode.BodySendMode.Value("FULL_DUPLEX_STREAMED")


def headers_msg(duplex: bool) -> Any:
    hmap = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key="x-nexus-model", raw_value=b"m")])
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hmap, end_of_stream=True))
    if duplex:
        msg.protocol_config.request_body_mode = FULL_DUPLEX
        msg.protocol_config.response_body_mode = FULL_DUPLEX
    return msg


def picker_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "endpoint-picking gateway asks" in r.getMessage()]


def test_the_first_picking_stream_logs_the_hostname_backends_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nexus_grpc")

    async def main() -> None:
        runtime = Runtime(load_config_text(CONFIG, source="nexus.toml"))
        port = await runtime.start(ServeOptions(listen="127.0.0.1:0"))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.ExternalProcessorStub(channel)

                async def one(duplex: bool) -> str:
                    call = stub.Process()
                    await call.write(headers_msg(duplex))
                    reply = await call.read()
                    call.cancel()
                    return str(reply.WhichOneof("response"))

                assert await one(duplex=False) == "request_headers"  # not a picker: routed, silent
                assert picker_lines(caplog) == []
                assert await one(duplex=True) == "request_headers"  # picked gpu-1
                assert await one(duplex=True) == "request_headers"
        finally:
            await runtime.stop(drain_seconds=0, grace_seconds=1)

    asyncio.run(main())
    [line] = picker_lines(caplog)  # once per configuration, not per request
    assert line.startswith("ext_proc: an endpoint-picking gateway asks: nexus.toml: backends[1].url: ")
    assert "backend 'cloud'" in line and "is a name, not an IP literal" in line
