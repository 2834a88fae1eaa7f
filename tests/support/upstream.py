"""Tiny local HTTP upstreams for Envoy tests: each records what it received (method, path,
headers, body) and answers like an OpenAI-style backend (status, JSON with optional `usage`, or
a server-sent-event stream), optionally after a delay.

    with UpstreamServer("gpu-1") as gpu:
        gpu.answer = Answer(usage={"prompt_tokens": 10, "completion_tokens": 5})
        ...  # http://127.0.0.1:{gpu.port}
        assert gpu.received[0].headers["x-nexus-backend"] == "gpu-1"

Also a CLI, run by path from the repository root (deploy/envoy/README.md does): `python
tests/support/upstream.py gpu-1=11434 gpu-2=8000` serves stand-ins on those ports until stopped.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ","
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Answer:
    status: int = 200
    usage: dict[str, int] | None = None
    delay: float = 0.0  # seconds before the response headers
    stream: bool = False  # answer with an SSE stream (chunked)
    chunked: bool = False  # send the JSON answer chunked, without a content-length
    extra: dict[str, Any] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    upstream: UpstreamServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open: set[socket.socket] = set()  # connections being served (kept alive)
        self.open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End every kept-alive connection: a stopped server answers nothing more."""
        with self.open_lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.open.clear()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer that went away (a test disconnecting on purpose) is not an error here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        upstream = self.server.upstream
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            k = key.lower()
            headers[k] = f"{headers[k]},{value}" if k in headers else value
        received = Received(self.command, self.path, headers, self._read_body())
        answer = upstream.record(received)
        try:
            if answer.delay:
                time.sleep(answer.delay)
        finally:
            upstream.done()  # before the answer leaves: a slot freed by it is seen as freed here
        model = headers.get("x-nexus-model", "")
        with contextlib.suppress(ValueError, AttributeError):
            model = received.json().get("model", model)
        if answer.stream:
            self._stream(upstream.name, model, answer)
            return
        document: dict[str, Any] = {
            "object": "chat.completion",
            "model": model,
            "served_by": upstream.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            **answer.extra,
        }
        if answer.usage is not None:
            document["usage"] = answer.usage
        payload = json.dumps(document).encode()
        self.send_response(answer.status)
        self.send_header("content-type", "application/json")
        if answer.chunked:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for i in range(0, len(payload), 65536):
                piece = payload[i : i + 65536]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _stream(self, name: str, model: str, answer: Answer) -> None:
        self.send_response(answer.status)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        events = [
            {"object": "chat.completion.chunk", "model": model, "served_by": name, "delta": word}
            for word in ("hello", "from", name)
        ]
        for event in [*(f"data: {json.dumps(e)}\n\n" for e in events), "data: [DONE]\n\n"]:
            data = event.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            time.sleep(0.01)
        self.wfile.write(b"0\r\n\r\n")

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle


class UpstreamServer:
    """An HTTP/1.1 server on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, name: str, *, port: int = 0) -> None:
        self.name = name
        self.answer = Answer()
        self.received: list[Received] = []
        self.in_progress = 0
        self.max_in_progress = 0  # most requests handled at once (before their answers left)
        self._lock = threading.Condition()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.upstream = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def record(self, received: Received) -> Answer:
        with self._lock:
            self.received.append(received)
            self.in_progress += 1
            self.max_in_progress = max(self.max_in_progress, self.in_progress)
            self._lock.notify_all()
            return self.answer

    def done(self) -> None:
        with self._lock:
            self.in_progress -= 1

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until `count` requests arrived (or raise TimeoutError)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.received) >= count, timeout):
                raise TimeoutError(f"{self.name}: {len(self.received)} of {count} requests arrived")
            return list(self.received)

    def start(self) -> UpstreamServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and end the connections being kept alive (a peer then sees the
        server gone: connection refused or reset)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
        self._server.close_connections()

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """`python tests/support/upstream.py NAME=PORT ...`: stand-in backends until Ctrl-C or SIGTERM."""
    if not argv or any("=" not in arg for arg in argv):
        print("usage: python tests/support/upstream.py NAME=PORT [NAME=PORT ...]", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # `kill PID`: stop and exit 0
    servers = []
    try:
        for arg in argv:
            name, port = arg.split("=", 1)
            server = UpstreamServer(name, port=int(port)).start()
            servers.append(server)
            print(f"{name}: {server.url}", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
