"""The ceiling for benches/e2e.py: an EMPTY unary handler on the same server stack as nexus-grpc.

Same stack as `nexus-grpc serve` (one process): uvloop installed, `grpc.aio.server` with the same
channel options (`grpc.so_reuseport` 0, 4 MiB message limits) and `maximum_concurrent_rpcs` 1024.
Every method answers an empty message at once (raw bytes, no protobuf work), so h2load can send it
the same gRPC frames it sends the real server. `--interceptor` adds one pass-through async
`ServerInterceptor`, the shape of nexus-grpc's GateInterceptor, to price that layer.

    .venv/bin/python benches/empty_server.py --listen 127.0.0.1:50099 [--interceptor]

Started and stopped by benches/e2e.py; SIGTERM/SIGINT stop it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # nexus-grpc's [limits] max_message_bytes default
MAX_CONCURRENT_RPCS = 1024  # nexus-grpc's [server] max_concurrent_rpcs default


async def _empty(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b""


_HANDLER = grpc.unary_unary_rpc_method_handler(_empty)  # no (de)serializers: raw bytes


class _AnyMethod(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return _HANDLER


class _PassThrough(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return await continuation(details)


async def serve(listen: str, interceptor: bool) -> None:
    server = grpc.aio.server(
        interceptors=[_PassThrough()] if interceptor else None,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    server.add_generic_rpc_handlers((_AnyMethod(),))
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"empty server listening on {listen}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description="empty unary gRPC handler (bench ceiling)")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--interceptor", action="store_true", help="add a pass-through interceptor")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(serve(args.listen, args.interceptor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
