"""The processes of deploy/kubernetes/ on this machine: nexus-grpc replicas started as the Deployment
starts them (its container args, the ConfigMap's TOML with the cluster's addresses swapped for
loopback ones), Redis with the StatefulSet's arguments, Envoy on the ConfigMap's config with the
headless Service's DNS name swapped for the replicas' endpoints."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import redis
import yaml
from deploy_manifests import Manifests, clusters, flag, listeners
from support.net import free_port, wait_until
from support.servers import serve_env, wait_serving

from nexus_grpc import api
from nexus_grpc.domain.money import usd_to_nano


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """Each old text exactly once: a manifest that changed shape fails here, not later."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in the manifest"
        text = text.replace(old, new)
    return text


class Replica:
    """One `nexus-grpc` process, started with the Deployment's container args."""

    def __init__(self, m: Manifests, config: Path, port: int, log: Path, env: Mapping[str, str]) -> None:
        args = list(m.nexus_container["args"])
        args[args.index("--config") + 1] = str(config)
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self.log = log
        environ = serve_env(env)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nexus_grpc.cli", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environ,
            )
        self.channel = grpc.insecure_channel(self.target)
        self.budget = api.BudgetServiceStub(self.channel)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """What the readinessProbe waits for: the health service SERVING."""
        wait_serving(self.target, self.proc, timeout=timeout, log=self.log_text)

    def spent_reserved(self) -> tuple[int, int]:
        budget = self.budget.GetBudget(api.GetBudgetRequest(), timeout=5).budget
        return usd_to_nano(budget.spent_usd), usd_to_nano(budget.reserved_usd)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""


class Redis:
    """redis-server with the StatefulSet's arguments: its port and --dir swapped, bound to loopback."""

    def __init__(self, m: Manifests, data: Path) -> None:
        args = list(m.redis_args)
        assert args[0] == "redis-server"
        self.port = free_port()
        args[args.index("--port") + 1] = str(self.port)
        args[args.index("--dir") + 1] = str(data)
        assert flag(args, "--appendonly") == "yes"  # a restart keeps the ledger
        self.args = [*args, "--bind", "127.0.0.1", "--logfile", str(data / "redis.log")]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        client, proc = self.client(), self.proc

        def answers() -> bool:
            assert proc.poll() is None, f"redis-server exited with {proc.returncode}"
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, "redis-server to answer PING", timeout=10)

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops the pod: Redis writes and syncs the AOF, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)


def envoy_template(m: Manifests, replicas: list[int], backends: Mapping[str, int]) -> str:
    """The ConfigMap's Envoy config with placeholders for the ports EnvoyProcess picks; the
    nexus_grpc cluster gets one endpoint per replica, each backend cluster its stand-in."""
    config: dict[str, Any] = copy.deepcopy(m.envoy_config)
    config["admin"]["address"]["socket_address"]["port_value"] = "${ADMIN_PORT}"
    by_name = listeners(config)
    by_name["llm_ingress"]["address"]["socket_address"]["port_value"] = "${ENVOY_PORT}"
    by_name["health"]["address"]["socket_address"]["port_value"] = "${HEALTH_PORT}"
    by_cluster = clusters(config)

    def point(name: str, ports: list[int]) -> None:
        by_cluster[name]["load_assignment"]["endpoints"] = [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                    for p in ports
                ]
            }
        ]

    point("nexus_grpc", replicas)
    for name, port in backends.items():
        point(name, [port])
    point("envoy_admin", [0])
    by_cluster["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]["port_value"] = "${ADMIN_PORT}"
    return yaml.safe_dump(config, sort_keys=False)
