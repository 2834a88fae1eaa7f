"""The floors for benches/e2e.py: handlers on the same server stack as nexus-grpc that do no work.

Same stack as `nexus-grpc serve` (one process): uvloop installed, `grpc.aio.server` with the same
channel options (`grpc.so_reuseport` 0, 4 MiB message limits) and a `maximum_concurrent_rpcs`.
Every method path is answered by one unary handler:

- `--mode raw`: returns empty bytes at once, no (de)serializer — the grpc.aio floor;
- `--mode proto`: decodes the request as a `DecideRequest` and answers a minimal `DecideResponse`
  (the request id, a Route with a backend id and a decision id), through the generated message
  classes as grpc's (de)serializers — the protobuf floor of a Decide;
- `--interceptor`: adds one pass-through async `grpc.aio.ServerInterceptor`, to price that layer
  (nexus-grpc has none: its gate is inside the method handlers).

    .venv/bin/python benches/empty_server.py --listen 127.0.0.1:50099 [--mode proto] [--interceptor]

Started and stopped by benches/e2e.py; SIGTERM/SIGINT stop it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # nexus-grpc's [limits] max_message_bytes default
# nexus-grpc's grpc.aio ceiling: max_concurrent_rpcs + max_concurrent_streams (defaults) + 64
MAX_CONCURRENT_RPCS = 1024 + 1024 + 64


async def _raw(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b""


async def _proto(
    request: dpb.DecideRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> dpb.DecideResponse:
    return dpb.DecideResponse(
        request_id=request.request_id,
        route=dpb.Route(backend_id="s0", decision_id="0123456789abcdef-1"),
    )


HANDLERS = {
    "raw": grpc.unary_unary_rpc_method_handler(_raw),  # no (de)serializers: raw bytes
    "proto": grpc.unary_unary_rpc_method_handler(
        _proto,
        request_deserializer=dpb.DecideRequest.FromString,
        response_serializer=dpb.DecideResponse.SerializeToString,
    ),
}


class _AnyMethod(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, handler: grpc.RpcMethodHandler[Any, Any]) -> None:
        self.handler = handler

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return self.handler


class _PassThrough(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return await continuation(details)


async def serve(listen: str, mode: str, interceptor: bool) -> None:
    server = grpc.aio.server(
        interceptors=[_PassThrough()] if interceptor else None,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    server.add_generic_rpc_handlers((_AnyMethod(HANDLERS[mode]),))
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{mode} server{' + interceptor' if interceptor else ''} listening on {listen}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description="no-work unary gRPC handlers (bench floors)")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--mode", choices=sorted(HANDLERS), default="raw")
    parser.add_argument("--interceptor", action="store_true", help="add a pass-through interceptor")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(serve(args.listen, args.mode, args.interceptor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
