"""Active health checks against real local HTTP servers (stdlib `http.server` in threads) that
answer, fail (500), time out and recover, or answer 401.

The server reports SERVING only after the first probe round; thresholds are respected; models a
probe lists are merged (the declaration wins); an admin-set DRAINING sticks."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from support.net import wait_until
from support.servers import stubs

from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.domain.enums import BackendStatus
from nexus_grpc.domain.live import LiveBackend
from nexus_grpc.testing.server import TestServer

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
H, U = BackendStatus.HEALTHY, BackendStatus.UNHEALTHY


class Upstream:
    """A stdlib HTTP server whose answer can be switched: "ok", "fail" (500), "auth" (401),
    "hang" (no answer until released or switched)."""

    def __init__(self, mode: str, body: dict[str, Any]) -> None:
        self.mode = mode
        self.body = json.dumps(body).encode()
        self.release = threading.Event()
        self.seen: list[dict[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                if upstream.mode == "hang":
                    upstream.release.wait(20)
                code = {"ok": 200, "hang": 200, "fail": 500, "auth": 401}[upstream.mode]
                payload = upstream.body if code == 200 else b'{"error": "no"}'
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a probe that timed out closed its end: nothing to report

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode != "hang":
            self.release.set()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    made = {
        "ollama": Upstream("ok", {"models": [{"name": "declared"}, {"name": "llama3:8b"}]}),
        "flaky": Upstream("ok", {"object": "list", "data": [{"id": "flaky-model"}]}),
        "slow": Upstream("hang", {}),
        "auth": Upstream("auth", {}),
    }
    yield made
    for upstream in made.values():
        upstream.close()


CONFIG = """\
[server]
drain_seconds = 0
grace_seconds = 1

[ledger]
kind = "memory"

[health_check]
enabled = true
interval_seconds = 0.3
timeout_seconds = 1.5
failure_threshold = 2
recovery_threshold = 2

[[backends]]
id = "ollama"
url = "{ollama}"
type = "ollama"
priority = 1
[[backends.models]]
id = "declared"
context_length = 4096
tools = true

[[backends]]
id = "flaky"
url = "{flaky}"
type = "vllm"

[[backends]]
id = "slow"
url = "{slow}"
type = "llamacpp"

[[backends]]
id = "auth"
url = "{auth}/base/"
type = "generic"
zone = "restricted"
health_path = "/v1/models"
health_headers_env = "NEXUS_TEST_PROBE_HEADERS"

[[backends]]
id = "cloud"
url = "https://api.cloud.test"
type = "openai"
[backends.pricing]
input_per_1k = 0.01
output_per_1k = 0.02
[[backends.models]]
id = "gpt-x"
"""


def test_probes_drive_backend_status(upstreams: dict[str, Upstream], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_TEST_PROBE_HEADERS", "Authorization: Bearer probe-token\nX-Probe: 1")
    text = CONFIG.format(**{name: u.url for name, u in upstreams.items()})
    server = TestServer(config_text=text).start()
    try:
        s = stubs(server.channel)
        rt = server.runtime

        def live(backend_id: str) -> LiveBackend:
            found = rt.registry.get(backend_id)
            assert found is not None
            return found[1]

        def probes(backend_id: str) -> tuple[BackendStatus, int, int]:
            """(status, consecutive successes, consecutive failures), read on the server's loop
            so no probe lands between the reads."""

            async def read() -> tuple[BackendStatus, int, int]:
                b = live(backend_id)
                return b.status, b.probe_successes, b.probe_failures

            return server.run(read())

        def health() -> int:
            return int(s.health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)

        # the slow backend holds the first round for its 1.5 s timeout: not SERVING meanwhile
        assert health() == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            s.decision.Decide(dpb.DecideRequest(model="declared"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rt.prober.rounds == 0 and live("slow").status == BackendStatus.UNKNOWN
        wait_until(lambda: health() == SERVING, "SERVING", timeout=20)
        assert rt.prober.rounds >= 1
        statuses = {b: live(b).status for b in ("ollama", "flaky", "slow", "auth", "cloud")}
        assert statuses == {"ollama": H, "flaky": H, "slow": U, "auth": H, "cloud": H}
        assert "timed out after 1.5 s" in live("slow").reason

        # paths per type, the health path on the URL's base path, headers from the environment
        assert upstreams["ollama"].seen[0]["path"] == "/api/tags"
        assert upstreams["flaky"].seen[0]["path"] == "/v1/models"
        assert upstreams["slow"].seen[0]["path"] == "/health"
        auth = upstreams["auth"].seen[0]
        assert auth["path"] == "/base/v1/models"
        assert (auth["authorization"], auth["x-probe"]) == ("Bearer probe-token", "1")

        # discovered models merged: the declaration wins, the rest unlimited and capability-less
        listed = {b.id: b for b in s.registry.ListBackends(rpb.ListBackendsRequest(), timeout=5).backends}
        models = {m.id: (m.context_length, m.tools) for m in listed["ollama"].models}
        assert models == {"declared": (4096, True), "llama3:8b": (0, False)}
        assert [m.id for m in listed["flaky"].models] == ["flaky-model"]
        assert listed["ollama"].latency_ema_ms > 0
        for model, backend in (("llama3:8b", "ollama"), ("flaky-model", "flaky"), ("declared", "ollama")):
            resp = s.decision.Decide(dpb.DecideRequest(model=model), timeout=5)
            assert resp.route.backend_id == backend, model

        # the hanging server recovers: two successes in a row (recovery_threshold) make it HEALTHY
        upstreams["slow"].set("ok")
        wait_until(lambda: probes("slow")[1] >= 1, "a first successful probe", timeout=20)
        status, successes, _ = probes("slow")
        assert status == U or successes >= 2
        wait_until(lambda: live("slow").status == H, "slow recovers", timeout=20)

        # failures: one is not enough (failure_threshold = 2), two are
        upstreams["flaky"].set("fail")
        wait_until(lambda: probes("flaky")[2] >= 1, "a first failed probe", timeout=20)
        status, _, failures = probes("flaky")
        assert status == H or failures >= 2
        wait_until(lambda: live("flaky").status == U, "flaky turns UNHEALTHY", timeout=20)
        assert live("flaky").reason == "health probe: HTTP 500"
        resp = s.decision.Decide(dpb.DecideRequest(model="flaky-model"), timeout=5)
        assert not resp.HasField("route")
        upstreams["flaky"].set("ok")
        wait_until(lambda: live("flaky").status == H, "flaky recovers", timeout=20)

        # an admin-set DRAINING sticks while the probes keep succeeding
        s.registry.SetBackendState(
            rpb.SetBackendStateRequest(backend_id="ollama", status=tpb.BACKEND_STATUS_DRAINING), timeout=5
        )
        rounds = rt.prober.rounds
        wait_until(lambda: rt.prober.rounds >= rounds + 3, "three more rounds", timeout=20)
        assert live("ollama").status == BackendStatus.DRAINING
        assert live("ollama").probe_successes >= 3
        s.registry.SetBackendState(
            rpb.SetBackendStateRequest(backend_id="ollama", status=tpb.BACKEND_STATUS_HEALTHY), timeout=5
        )
        wait_until(lambda: live("ollama").status == H, "ollama healthy again", timeout=20)

        assert health() == SERVING  # probe results never touch the server's own health
        assert upstreams["auth"].seen and all(u.seen for u in upstreams.values())
    finally:
        server.stop()
