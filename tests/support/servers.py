"""Real nexus-grpc servers for tests: the gRPC stubs of one channel, the environment of a
`nexus-grpc serve` process started from this checkout, and the wait until it reports SERVING.

    proc = subprocess.Popen([sys.executable, "-m", "nexus_grpc.cli", "serve", "--listen", target],
                            env=serve_env())
    wait_serving(target, proc, log=lambda: log_path.read_text())
    s = stubs(channel)       # s.decision, s.registry, s.budget, s.admin, s.health

In-process servers are `nexus_grpc.testing.TestServer`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc._gen.nexus.v1 import (
    admin_pb2_grpc,
    budget_pb2_grpc,
    decision_pb2_grpc,
    registry_pb2_grpc,
)
from nexus_grpc._gen.nexus.v1 import budget_pb2 as bpb
from nexus_grpc._gen.nexus.v1 import decision_pb2 as dpb
from nexus_grpc._gen.nexus.v1 import registry_pb2 as rpb
from nexus_grpc._gen.nexus.v1 import types_pb2 as tpb
from nexus_grpc.testing import TestServer
from support.net import wait_until

__all__ = [
    "REPO",
    "SERVING",
    "SMALL_TOML",
    "SQLITE_TOML",
    "TOKEN_VARS",
    "StartServer",
    "Stubs",
    "serve_env",
    "stubs",
    "wait_serving",
]

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
# The servers' default token variables and the server tests' own: a test sets them on purpose.
TOKEN_VARS = ("NEXUS_ADMIN_TOKEN", "NEXUS_CLIENT_TOKEN", "NEXUS_TEST_ADMIN", "NEXUS_TEST_CLIENT")
StartServer = Callable[..., TestServer]  # the server tests' `start_server` fixture

# The server tests' small fleet (fixtures `small`, `small_toml`): one of everything they need.
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


# A priced cloud backend and a free local one on a sqlite ledger in the server's directory, under
# a block_cloud budget: for the tests of a ledger that stops taking writes.
SQLITE_TOML = """\
[server]
drain_seconds = 0
[routing.budget]
monthly_limit_usd = 100.0
hard_limit_action = "block_cloud"
[ledger]
kind = "sqlite"
path = "ledger.db"
[[backends]]
id = "cloud"
url = "https://api.openai.com"
type = "openai"
[[backends.models]]
id = "gpt-4-turbo"
[[backends]]
id = "local"
url = "http://127.0.0.1:9001"
type = "ollama"
[[backends.models]]
id = "m"
"""


@dataclass(frozen=True)
class Stubs:
    """One stub per service, all on one channel."""

    decision: decision_pb2_grpc.DecisionServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub
    budget: budget_pb2_grpc.BudgetServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub

    def backend(self, backend_id: str) -> tpb.Backend:
        return self.registry.GetBackend(rpb.GetBackendRequest(backend_id=backend_id), timeout=5).backend

    def global_budget(self) -> tpb.BudgetState:
        return self.budget.GetBudget(bpb.GetBudgetRequest(), timeout=5).budget

    def report(self, **fields: Any) -> dpb.ReportOutcomeResponse:
        return self.decision.ReportOutcome(dpb.ReportOutcomeRequest(**fields), timeout=5)


def stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        decision_pb2_grpc.DecisionServiceStub(channel),
        registry_pb2_grpc.RegistryServiceStub(channel),
        budget_pb2_grpc.BudgetServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )


def serve_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without token variables, plus `extra`, with this checkout
    first on PYTHONPATH and unbuffered output (a log line is there when it is printed)."""
    env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
    env.update(extra or {})
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_serving(
    target: str,
    proc: subprocess.Popen[Any] | None = None,
    *,
    timeout: float = 30.0,
    log: Callable[[], str] = str,
) -> None:
    """Poll the gRPC health service at `target` (plaintext) until the whole server is SERVING;
    fail at once if `proc` exits meanwhile, and after `timeout`; both failures show `log()`."""
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the server for {target} exited with {proc.returncode}:\n{log()}")
            try:
                return bool(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == SERVING)
            except grpc.RpcError:
                return False

        wait_until(serving, lambda: f"{target} to report SERVING:\n{log()}", timeout, interval=0.05)
