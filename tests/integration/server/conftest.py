"""Fixtures for the real-server integration tests: a `TestServer` (nexus_grpc.testing.server) on a
free loopback port, the gRPC stubs, small config files, and a helper for expected errors."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from nexus_grpc._gen.nexus.v1 import (
    admin_pb2_grpc,
    budget_pb2_grpc,
    decision_pb2_grpc,
    registry_pb2_grpc,
)
from nexus_grpc.testing.server import TestServer

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent

# A small fleet with one of everything the decision tests need.
#   local  restricted, max_concurrency 1   m (ctx 4096), secret-model
#   cloud  open (openai, priced)           gpt-4-turbo, secret-model
#   p1/p2  restricted, tier 1              primary (fallback -> backup), backup
SMALL_TOML = """\
[server]
drain_seconds = 0.2
grace_seconds = 0.5

[routing]
strategy = "smart"
[routing.fallbacks]
"primary" = ["backup"]

[[routing.policies]]
model_pattern = "secret*"
privacy = "restricted"

[routing.budget]
monthly_limit_usd = 100.0
soft_limit_percent = 75.0
hard_limit_action = "block_cloud"
[routing.budget.tenants]
"team-a" = 20.0

[ledger]
kind = "memory"

[pricing."secret-model"]
input_per_1k = 0.001
output_per_1k = 0.002

[queue]
enabled = true
max_wait_ms = 5000

[[backends]]
id = "local"
url = "http://127.0.0.1:9001"
type = "ollama"
tier = 2
priority = 1
max_concurrency = 1
[[backends.models]]
id = "m"
context_length = 4096
[[backends.models]]
id = "secret-model"

[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
tier = 5
priority = 60
[[backends.models]]
id = "gpt-4-turbo"
[[backends.models]]
id = "secret-model"

[[backends]]
id = "p1"
url = "http://127.0.0.1:9002"
type = "vllm"
[[backends.models]]
id = "primary"

[[backends]]
id = "p2"
url = "http://127.0.0.1:9003"
type = "vllm"
[[backends.models]]
id = "backup"
"""

TOKEN_VARS = ("NEXUS_ADMIN_TOKEN", "NEXUS_CLIENT_TOKEN", "NEXUS_TEST_ADMIN", "NEXUS_TEST_CLIENT")
# A traceback or a source path in a status message means an internal leak.
LEAK = re.compile(r"Traceback|File \"|\.py\b|(?:/[\w.-]+){2,}")


@dataclass
class Stubs:
    decision: decision_pb2_grpc.DecisionServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub
    budget: budget_pb2_grpc.BudgetServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub


def make_stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        decision_pb2_grpc.DecisionServiceStub(channel),
        registry_pb2_grpc.RegistryServiceStub(channel),
        budget_pb2_grpc.BudgetServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )


ErrorOf = Callable[..., tuple[grpc.StatusCode, str]]
StartServer = Callable[..., TestServer]


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without admin/client tokens whatever the environment holds."""
    for name in TOKEN_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """start_server(config_text=..., config_path=..., listen=...) -> a started TestServer,
    stopped at teardown."""
    servers: list[TestServer] = []

    def start(**kwargs: Any) -> TestServer:
        server = TestServer(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def demo(start_server: StartServer) -> TestServer:
    """The built-in demo fleet (`nexus-grpc serve` without --config)."""
    return start_server()


@pytest.fixture
def small(start_server: StartServer) -> TestServer:
    return start_server(config_text=SMALL_TOML)


@pytest.fixture
def small_toml() -> str:
    return SMALL_TOML


@pytest.fixture
def stubs_of() -> Callable[[TestServer], Stubs]:
    return lambda server: make_stubs(server.channel)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "nexus.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def error_of() -> ErrorOf:
    """error_of(stub.Method, request, **kw) -> (status code, details); fails if the call succeeds
    or the details leak a traceback or a source path."""

    def call(method: Callable[..., Any], request: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
        kwargs.setdefault("timeout", 10)
        with pytest.raises(grpc.RpcError) as info:
            method(request, **kwargs)
        err: Any = info.value
        code: grpc.StatusCode = err.code()
        details: str = err.details() or ""
        assert not LEAK.search(details), f"status details leak internals: {details!r}"
        return code, details

    return call


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for subprocesses: this venv first on PATH, the repo importable, no tokens."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env
