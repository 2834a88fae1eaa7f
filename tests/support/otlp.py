"""A stand-in for an OpenTelemetry collector: a small HTTP server on a free loopback port that
takes OTLP/HTTP (JSON) on /v1/traces and /v1/metrics and keeps what it decoded."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Collector", "attrs", "hex_id"]


class Collector:
    """Receives OTLP/HTTP JSON on /v1/traces (and /v1/metrics) and keeps the decoded spans."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.foreign: list[str] = []  # content types of posts not in OTLP/JSON
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                collector.receive(self.path, self.headers.get("content-type", ""), body)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        with self.lock:
            self.paths.append(path)
            if path == "/v1/metrics":
                for rm in json.loads(body).get("resourceMetrics", []):
                    for sm in rm.get("scopeMetrics", []):
                        self.metrics.extend(sm.get("metrics", []))
                return
            if not content_type.startswith("application/json"):
                self.foreign.append(content_type)  # another exporter's protobuf (Envoy's)
                return
            for rs in json.loads(body).get("resourceSpans", []):
                resource = attrs(rs.get("resource", {}).get("attributes", []))
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        span["attrs"] = attrs(span.get("attributes", []))
                        span["resource"] = resource
                        self.spans.append(span)

    def wait(
        self, condition: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if condition(spans):
                return spans
            assert time.monotonic() < deadline, f"{what}: got {[s['name'] for s in spans]}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        value = item["value"]
        out[item["key"]] = next(iter(value.values())) if value else None
    return out


def hex_id(value: str) -> str:
    """OTLP/JSON carries ids as hex (some encoders as base64): normalize to hex."""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    return base64.b64decode(value).hex()
