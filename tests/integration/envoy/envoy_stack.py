"""Helpers for the Envoy tests, imported as `envoy_stack` by conftest.py and the tests.

The stack: three small upstreams, nexus-grpc (a TestServer: a Runtime on its own loop in a
thread) and the real Envoy on a shipped config from deploy/envoy/, all on free loopback ports."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from support.envoy import DEPLOY_DIR, EnvoyProcess
from support.net import free_port
from support.upstream import UpstreamServer

from nexus_grpc._gen.nexus.v1 import (
    budget_pb2,
    budget_pb2_grpc,
    decision_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from nexus_grpc.domain.money import usd_to_nano
from nexus_grpc.domain.scopes import GLOBAL
from nexus_grpc.ledger.base import month_of
from nexus_grpc.ledger.memory import MemoryLedger
from nexus_grpc.servicers.envoy import EnvoyStats, envoy_stats
from nexus_grpc.testing import TestServer

T = TypeVar("T")

FLEET_TOML = """\
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
{server_extra}

[ledger]
kind = "memory"

[envoy]
read_body = {read_body}
read_response_usage = {read_response_usage}
expose_reasons = "{expose_reasons}"

[queue]
max_wait_ms = {max_wait_ms}

[routing]
strategy = "priority_only"

[routing.aliases]
"gpt-4" = "llama3:70b"
"reasoning" = "deepseek-r1:70b"

[routing.fallbacks]
"llama3:70b" = ["qwen2:72b"]

[[routing.policies]]
model_pattern = "gpt-4*"
privacy = "restricted"

[routing.budget]
monthly_limit_usd = 100.0
soft_limit_percent = 75.0
hard_limit_action = "block_cloud"

[pricing.default]
input_per_1k = 0.001
output_per_1k = 0.002

[[backends]]
id = "gpu-1"
url = "{gpu1}"
type = "ollama"
tier = 3
priority = 1
[[backends.models]]
id = "llama3:70b"
tools = true
json_mode = true
[[backends.models]]
id = "shared-7b"

[[backends]]
id = "gpu-2"
url = "{gpu2}"
type = "vllm"
tier = 2
priority = 10
max_concurrency = {gpu2_concurrency}
[[backends.models]]
id = "qwen2:72b"
[[backends.models]]
id = "deepseek-r1:70b"

[[backends]]
id = "openai"
url = "{cloud}"
type = "openai"
tier = 5
priority = 60
[[backends.models]]
id = "gpt-4-turbo"
vision = true
tools = true
json_mode = true
[[backends.models]]
id = "gpt-3.5-turbo"
tools = true
[[backends.models]]
id = "shared-7b"
vision = true
"""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class RawResult:
    status: int | None  # None: the connection ended (or timed out) without a response
    elapsed: float  # seconds from the first byte sent to the status line (or to the end)
    head: bytes  # the status line and headers
    sent_all: bool  # the client got its whole request out


def raw_request(
    port: int, head: bytes, body: bytes = b"", *, byte_delay: float = 0.0, timeout: float = 30.0
) -> RawResult:
    """Send `head` then `body` on one connection (byte by byte with `byte_delay` between bytes,
    else as fast as the socket takes them) while reading the answer concurrently, as a careful
    client does; returns when the status line and headers arrived, the connection closed, or
    `timeout` passed."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    stop = threading.Event()
    sent = [False]

    def send() -> None:
        try:
            sock.sendall(head)
            if byte_delay:
                for i in range(len(body)):
                    if stop.wait(byte_delay):
                        return
                    sock.sendall(body[i : i + 1])
            else:
                sock.sendall(body)
            sent[0] = True
        except OSError:
            pass

    started = time.monotonic()
    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    except OSError:  # a reset after the answer, or the timeout
        pass
    elapsed = time.monotonic() - started
    stop.set()
    sock.close()
    writer.join(timeout=5)
    line = received.split(b"\r\n", 1)[0].split()
    status = int(line[1]) if len(line) >= 2 and line[1].isdigit() else None
    return RawResult(status, elapsed, received.split(b"\r\n\r\n", 1)[0], sent[0])


def http_request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | str | None = None
) -> Response:
    """One request on its own connection (stdlib http.client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


class NexusThread:
    """A nexus-grpc `TestServer` (a Runtime on 127.0.0.1:0, its own loop thread) with the stubs
    the Envoy tests read; with `root_certificates` (the config serves TLS) its client channel
    trusts them."""

    def __init__(self, toml: str, root_certificates: bytes | None = None) -> None:
        self.server = TestServer(config_text=toml, start_timeout=30).start()
        self.runtime, self.port = self.server.runtime, self.server.port
        if root_certificates is None:
            self.channel = grpc.insecure_channel(self.server.target)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(self.server.target, creds)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.budget = budget_pb2_grpc.BudgetServiceStub(self.channel)
        self.decision = decision_pb2_grpc.DecisionServiceStub(self.channel)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self.server.run(coro, timeout)

    @property
    def stats(self) -> EnvoyStats:
        return envoy_stats(self.runtime.engine)

    def spent(self, tenant: str = "") -> float:
        return float(self.budget.GetBudget(budget_pb2.GetBudgetRequest(tenant=tenant)).budget.spent_usd)

    def reserved(self, tenant: str = "") -> float:
        return float(self.budget.GetBudget(budget_pb2.GetBudgetRequest(tenant=tenant)).budget.reserved_usd)

    def backend(self, backend_id: str) -> Any:
        return self.registry.GetBackend(registry_pb2.GetBackendRequest(backend_id=backend_id)).backend

    def in_flight(self) -> dict[str, int]:
        backends = self.registry.ListBackends(registry_pb2.ListBackendsRequest()).backends
        return {b.id: b.in_flight for b in backends}

    def set_state(self, backend_id: str, status: str, eta_ms: int | None = None) -> None:
        request = registry_pb2.SetBackendStateRequest(
            backend_id=backend_id, status=types_pb2.BackendStatus.Value(f"BACKEND_STATUS_{status}")
        )
        if eta_ms is not None:
            request.loading_eta_ms = eta_ms
        self.registry.SetBackendState(request)

    def seed_spend(self, usd: float) -> None:
        async def seed() -> None:
            ledger = self.runtime.engine.ledger
            assert isinstance(ledger, MemoryLedger)
            ledger.seed_spend(GLOBAL, month_of(time.time()), usd_to_nano(usd))

        self.call(seed())

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(drain_seconds=0, grace_seconds=1)


@dataclass
class Stack:
    envoy: EnvoyProcess
    nexus: NexusThread | None
    upstreams: dict[str, UpstreamServer]

    @property
    def nx(self) -> NexusThread:
        assert self.nexus is not None
        return self.nexus

    def http(
        self,
        path: str = "/v1/chat/completions",
        headers: dict[str, str] | None = None,
        body: bytes | str | None = None,
        method: str | None = None,
    ) -> Response:
        return http_request(
            self.envoy.port, method or ("POST" if body is not None else "GET"), path, headers, body
        )

    def received(self) -> dict[str, int]:
        return {name: len(u.received) for name, u in self.upstreams.items()}


StackFactory = Callable[..., Stack]


def make_stack_factory(closers: list[Callable[[], None]]) -> StackFactory:
    """make(filter_name, read_body=..., nexus_up=True, ...) → a running Stack; every process it
    starts is added to `closers`. `server_extra` adds lines to nexus-grpc's [server] table,
    `tables` whole tables to its config, `envoy_replace` changes the shipped Envoy config (see
    EnvoyProcess)."""

    def make(
        filter_name: str,
        *,
        read_body: bool = False,
        read_response_usage: bool = False,
        expose_reasons: str = "full",
        max_wait_ms: int = 3000,
        gpu2_concurrency: int = 0,
        nexus_up: bool = True,
        server_extra: str = "",
        tables: str = "",
        envoy_replace: dict[str, str] | None = None,
    ) -> Stack:
        upstreams = {name: UpstreamServer(name).start() for name in ("gpu-1", "gpu-2", "openai")}
        closers.extend(u.stop for u in upstreams.values())
        nexus = None
        nexus_port = free_port()  # nothing listens there when nexus_up is False
        if nexus_up:
            nexus = NexusThread(
                FLEET_TOML.format(
                    read_body=str(read_body).lower(),
                    read_response_usage=str(read_response_usage).lower(),
                    expose_reasons=expose_reasons,
                    max_wait_ms=max_wait_ms,
                    gpu2_concurrency=gpu2_concurrency,
                    server_extra=server_extra,
                    gpu1=upstreams["gpu-1"].url,
                    gpu2=upstreams["gpu-2"].url,
                    cloud=upstreams["openai"].url,
                )
                + tables
            )
            closers.append(nexus.stop)
            nexus_port = nexus.port
        envoy = EnvoyProcess(
            DEPLOY_DIR / f"{filter_name}.yaml",
            {
                "NEXUS_HOST": "127.0.0.1",
                "NEXUS_PORT": nexus_port,
                "CLOUD_HOST": "127.0.0.1",
                "CLOUD_PORT": upstreams["openai"].port,
            },
            replace=envoy_replace,
        )
        closers.append(envoy.stop)
        envoy.start()
        return Stack(envoy, nexus, upstreams)

    return make


# -- the inference-pool stack: deploy/envoy/inference-pool.yaml with nexus-grpc as its picker ----

POOL_TOML = """\
[server]
admin_token_env = "NEXUS_ENVOY_TEST_UNSET_TOKEN"
{server_extra}

[server.tls]
cert = "{cert}"
key = "{key}"

[ledger]
kind = "memory"

[envoy]
read_body = true

[queue]
max_wait_ms = 3000

[routing]
strategy = "priority_only"

[routing.aliases]
"gpt-4" = "llama3:70b"

[[routing.policies]]
model_pattern = "secret-*"
privacy = "restricted"

[pricing.default]
input_per_1k = 0.001
output_per_1k = 0.002

[[backends]]
id = "gpu-1"
url = "{gpu1}"
type = "ollama"
priority = 1
[[backends.models]]
id = "llama3:70b"
[[backends.models]]
id = "secret-7b"

[[backends]]
id = "gpu-2"
url = "{gpu2}"
type = "vllm"
priority = 10
[[backends.models]]
id = "llama3:70b"
[[backends.models]]
id = "secret-7b"

[[backends]]
id = "open-1"
url = "{open1}"
type = "openai"
priority = 0
[[backends.models]]
id = "llama3:70b"
[[backends.models]]
id = "secret-7b"

[[backends]]
id = "cloud"
url = "{cloud}"
type = "openai"
priority = 0
[[backends.models]]
id = "cloud-only"
[[backends.models]]
id = "llama3:70b"

[[backends]]
id = "stray"
url = "{stray}"
type = "ollama"
priority = 1
[[backends.models]]
id = "stray-model"
"""
POOL = ("gpu-1", "gpu-2", "open-1")  # the pool's endpoints, in the cluster's order
# A test-only filter that turns a client header into the endpoint subset a gateway would send
# (a real gateway sets the metadata itself; never let clients do this in production).
SUBSET_FILTER = """          http_filters:
          - name: envoy.filters.http.header_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              request_rules:
              - header: x-test-endpoint-subset
                remove: true
                on_header_present:
                  metadata_namespace: envoy.lb.subset_hint
                  key: x-gateway-destination-endpoint-subset
                  type: STRING
"""


@dataclass
class PoolStack(Stack):
    cert: Path = Path()

    def endpoint(self, name: str) -> str:
        return f"127.0.0.1:{self.upstreams[name].port}"

    def access_log(self, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
        """The first `count` access log lines Envoy wrote (JSON), waiting for them."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.envoy.log_path.read_text(errors="replace")
            lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)


def make_pool_stack_factory(closers: list[Callable[[], None]], tmp: Path) -> Callable[..., PoolStack]:
    """make(nexus_up=True, subset_filter=True, server_extra="") → a running PoolStack (`server_extra`:
    lines added to nexus-grpc's [server] table): five upstreams (the three
    pool endpoints gpu-1, gpu-2, open-1; `cloud`, a hostname backend; `stray`, an IP backend
    outside the pool), nexus-grpc on TLS with a dev certificate, and Envoy on
    inference-pool.yaml (plus the test subset filter)."""
    from nexus_grpc.devcert import write_dev_cert

    made = write_dev_cert(tmp / "tls", ("localhost", "127.0.0.1"), days=2, force=True)

    def make(*, nexus_up: bool = True, subset_filter: bool = True, server_extra: str = "") -> PoolStack:
        names = (*POOL, "cloud", "stray")
        upstreams = {name: UpstreamServer(name).start() for name in names}
        closers.extend(u.stop for u in upstreams.values())
        nexus = None
        nexus_port = free_port()
        if nexus_up:
            nexus = NexusThread(
                POOL_TOML.format(
                    server_extra=server_extra,
                    cert=made.cert,
                    key=made.key,
                    gpu1=upstreams["gpu-1"].url,
                    gpu2=upstreams["gpu-2"].url,
                    open1=upstreams["open-1"].url,
                    cloud=f"http://localhost:{upstreams['cloud'].port}",
                    stray=upstreams["stray"].url,
                ),
                root_certificates=made.cert.read_bytes(),
            )
            closers.append(nexus.stop)
            nexus_port = nexus.port
        envoy = EnvoyProcess(
            DEPLOY_DIR / "inference-pool.yaml",
            {
                "NEXUS_HOST": "127.0.0.1",
                "NEXUS_PORT": nexus_port,
                "NEXUS_CA": made.cert,
                "NEXUS_TLS_NAME": "localhost",
                "POOL_IP": "127.0.0.1",
                **{f"POOL_PORT_{i}": upstreams[name].port for i, name in enumerate(POOL, 1)},
            },
            log_level="warn",
            replace={"          http_filters:\n": SUBSET_FILTER} if subset_filter else None,
        )
        closers.append(envoy.stop)
        envoy.start()
        return PoolStack(envoy, nexus, upstreams, made.cert)

    return make
