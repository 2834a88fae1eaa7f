"""Helpers for the durability tests: real `nexus-grpc serve` processes (free port, SERVING wait,
kill -9, signals, a log file each), stubs, budget reads in nano-USD, percentiles."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nexus_grpc._gen.nexus.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    budget_pb2,
    budget_pb2_grpc,
    decision_pb2_grpc,
    registry_pb2_grpc,
)
from nexus_grpc.domain.money import NANO

REPO = Path(__file__).resolve().parents[3]
TOKEN_VARS = ("NEXUS_ADMIN_TOKEN", "NEXUS_CLIENT_TOKEN")
SERVING = health_pb2.HealthCheckResponse.SERVING


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nano(usd: float) -> int:
    """A GetBudget double back in nano-USD (exact below 2**53 nano)."""
    return round(usd * NANO)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Stubs:
    decision: decision_pb2_grpc.DecisionServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub
    budget: budget_pb2_grpc.BudgetServiceStub
    admin: admin_pb2_grpc.AdminServiceStub
    health: health_pb2_grpc.HealthStub


def stubs(channel: grpc.Channel) -> Stubs:
    return Stubs(
        decision_pb2_grpc.DecisionServiceStub(channel),
        registry_pb2_grpc.RegistryServiceStub(channel),
        budget_pb2_grpc.BudgetServiceStub(channel),
        admin_pb2_grpc.AdminServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )


class Serve:
    """One `python -m nexus_grpc.cli serve --config FILE --listen 127.0.0.1:PORT` process."""

    def __init__(self, config: Path, log: Path, port: int | None = None) -> None:
        self.config = config
        self.log = log
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in TOKEN_VARS}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "nexus_grpc.cli", "serve", "--config", str(config)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--listen", self.target], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.channel = grpc.insecure_channel(self.target)
        self.stubs = stubs(self.channel)

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"serve exited early:\n{self.log_text()}"
            try:
                status = self.stubs.health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"serve did not become SERVING:\n{self.log_text()}"
            time.sleep(0.05)

    def info(self) -> admin_pb2.GetServerInfoResponse:
        return self.stubs.admin.GetServerInfo(admin_pb2.GetServerInfoRequest(), timeout=10)

    def spent_reserved(self, tenant: str = "") -> tuple[int, int]:
        budget = self.stubs.budget.GetBudget(budget_pb2.GetBudgetRequest(tenant=tenant), timeout=10).budget
        return nano(budget.spent_usd), nano(budget.reserved_usd)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (graceful); SIGKILL if it does not exit in time."""
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""


Launch = Callable[..., Serve]
