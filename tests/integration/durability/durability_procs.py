"""Helpers for the durability tests: real `nexus-grpc serve` processes (free port, SERVING wait,
kill -9, signals, a log file each; built on support.servers), budget reads in nano-USD, percentiles."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from support.net import free_port
from support.servers import serve_env, stubs, wait_serving

from nexus_grpc._gen.nexus.v1 import admin_pb2, budget_pb2
from nexus_grpc.domain.money import NANO

__all__ = ["Launch", "Serve", "nano", "percentile"]


def nano(usd: float) -> int:
    """A GetBudget double back in nano-USD (exact below 2**53 nano)."""
    return round(usd * NANO)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


class Serve:
    """One `python -m nexus_grpc.cli serve --config FILE --listen 127.0.0.1:PORT` process."""

    def __init__(self, config: Path, log: Path, port: int | None = None) -> None:
        self.config = config
        self.log = log
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = serve_env()
        cmd = [sys.executable, "-m", "nexus_grpc.cli", "serve", "--config", str(config)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--listen", self.target], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self.channel = grpc.insecure_channel(self.target)
        self.stubs = stubs(self.channel)

    def wait_serving(self, timeout: float = 30.0) -> None:
        wait_serving(self.target, self.proc, timeout=timeout, log=self.log_text)

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
